"""Training data in memory and `TrainBatch` assembly.

Reads the on-disk format of docs/contracts.md (items / behaviors / samples Parquet + schema.json)
into flat numpy arrays: behaviors as a CSR per user (`offsets[u]:offsets[u+1]`, oldest first), items
as a dense raw-feature table. A batch is assembled with fancy indexing only:

    a request (user row u, request time t, hist_len h) sees behaviors offsets[u] .. offsets[u] + h - 1;
    position j of its sequence (newest first) is behavior offsets[u] + h - 1 - j, for j < min(h, L).

Samples that share (user, request time, hist_len) are ONE request with several targets, as the
service scores a candidate list: the sequence is read, projected and attended once for all of them
(`Requests`, at most `max_targets` targets each). A batch holds whole requests: [B requests, C
targets], padded targets masked. L is the longest visible history in the batch, capped at `max_len`
(dynamic padding: a batch of short histories does not pay for `max_len`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from twin.config import FeatureSchema
from twin.model import TrainBatch

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class Samples:
    user_row: np.ndarray  # int64 [n] row into TrainingData.user_ids / offsets
    user_id: np.ndarray  # int64 [n]
    item_row: np.ndarray  # int64 [n] row into TrainingData.item_raw
    ts: np.ndarray  # int64 [n] request time, ms
    label: np.ndarray  # float32 [n]
    hist_len: np.ndarray  # int64 [n] visible behaviors (oldest first)
    extra: dict[str, np.ndarray]  # other columns (e.g. target_kind), for analysis only

    def __len__(self) -> int:
        return len(self.ts)

    def subset(self, idx: np.ndarray) -> "Samples":
        return Samples(self.user_row[idx], self.user_id[idx], self.item_row[idx], self.ts[idx], self.label[idx],
                       self.hist_len[idx], {k: v[idx] for k, v in self.extra.items()})


@dataclass
class Requests:
    """The samples of one split grouped by (user row, ts, hist_len), at most max_targets per group.

    sample_idx[offsets[r]:offsets[r+1]] are request r's samples (indices into the split's Samples);
    user_row / ts / hist_len [R] are shared by them."""

    offsets: np.ndarray  # int64 [R + 1]
    sample_idx: np.ndarray  # int64 [n]
    user_row: np.ndarray  # int64 [R]
    ts: np.ndarray  # int64 [R]
    hist_len: np.ndarray  # int64 [R]

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)


def group_requests(samples: Samples, max_targets: int) -> Requests:
    if max_targets < 1:
        raise ValueError(f"max_targets must be >= 1, got {max_targets}")
    order = np.lexsort((samples.hist_len, samples.ts, samples.user_row))  # stable: split order within a group
    u, t, h = samples.user_row[order], samples.ts[order], samples.hist_len[order]
    new = np.r_[True, (u[1:] != u[:-1]) | (t[1:] != t[:-1]) | (h[1:] != h[:-1])] if len(order) else np.zeros(0, bool)
    group = np.cumsum(new) - 1  # [n] group of each sorted sample
    rank = np.arange(len(order)) - np.flatnonzero(new)[group]  # position within its group
    new |= (rank % max_targets == 0)  # cut groups larger than max_targets
    starts = np.flatnonzero(new)
    return Requests(offsets=np.append(starts, len(order)).astype(np.int64), sample_idx=order.astype(np.int64),
                    user_row=u[starts], ts=t[starts], hist_len=h[starts])


@dataclass
class TrainingData:
    schema: FeatureSchema
    meta: dict
    item_raw: np.ndarray  # int64 [n_items, F_h] raw inherent features, schema.inherent order
    user_ids: np.ndarray  # int64 [U] sorted
    offsets: np.ndarray  # int64 [U + 1] CSR offsets into the behavior arrays
    beh_item_row: np.ndarray  # int64 [N] row into item_raw
    beh_ts: np.ndarray  # int64 [N]
    beh_cross: np.ndarray  # float32 [N, J_s] stored cross values, schema.stored_cross_names() order
    splits: dict[str, Samples]
    fingerprint: str  # sha256 over the data files (identifies the data a model was trained on)
    _requests: dict = field(default_factory=dict, repr=False)  # (split, max_targets) -> Requests

    def without_inherent(self, names: list[str]) -> "TrainingData":
        """The same data with the named inherent features removed from the schema and the item table
        (an ablation). Behaviors, samples and the fingerprint are shared, not copied."""
        if "item_id" in names or not set(names) <= set(self.schema.inherent_names):
            raise ValueError(f"can drop only existing inherent features other than item_id, got {names}")
        keep = [j for j, n in enumerate(self.schema.inherent_names) if n not in names]
        schema = dataclasses.replace(self.schema, inherent=tuple(self.schema.inherent[j] for j in keep))
        return dataclasses.replace(self, schema=schema, item_raw=self.item_raw[:, keep], _requests={})

    def requests(self, split: str, max_targets: int) -> Requests:
        key = (split, max_targets)
        if key not in self._requests:
            self._requests[key] = group_requests(self.split(split), max_targets)
        return self._requests[key]

    def batches(self, split: str, batch_size: int, max_len: int, shuffle: bool = False, seed: int = 0,
                bucket: int = 0, max_targets: int = 64) -> Iterator[tuple[TrainBatch, np.ndarray]]:
        """Yield (TrainBatch, sample indices [B, C] into the split's Samples, -1 at padded targets).

        batch_size: targets per batch; whole requests are packed until the next would overflow it.
        shuffle: seeded permutation of the requests (same seed, same order).
        bucket:  if > 0, sort each window of `bucket` batches by history length before cutting it
                 into batches (then shuffle the batch order): far less padding for the same shuffle.
        """
        req = self.requests(split, max_targets)
        if batch_size < 1 or max_len < 1:
            raise ValueError(f"batch_size and max_len must be >= 1, got {batch_size}, {max_len}")
        order = np.arange(len(req))
        rng = np.random.default_rng(seed)
        if shuffle:
            order = rng.permutation(len(req))
        if bucket > 0:  # windows of about `bucket` batches' worth of targets, each sorted by history length
            window = np.cumsum(req.sizes[order]) // (batch_size * bucket)
            order = order[np.lexsort((req.hist_len[order], window))]
        # a request joins the batch its last target falls in: batches hold whole requests, about
        # batch_size targets each (at most max_targets - 1 more)
        cut = (np.cumsum(req.sizes[order]) - 1) // batch_size
        chunks = np.split(order, np.flatnonzero(np.diff(cut)) + 1) if len(order) else []
        if shuffle and bucket > 0:
            chunks = [chunks[i] for i in rng.permutation(len(chunks))]
        for idx in chunks:
            yield self.make_batch(self.split(split), req, idx, max_len)

    def split(self, name: str) -> Samples:
        if name not in self.splits:
            raise ValueError(f"unknown split {name!r}; have {sorted(self.splits)}")
        return self.splits[name]

    def make_batch(self, samples: Samples, req: Requests, idx: np.ndarray, max_len: int
                   ) -> tuple[TrainBatch, np.ndarray]:
        """Requests `idx` -> (TrainBatch [B = len(idx), C = most targets], sample indices [B, C] (-1 = pad)),
        L = min(max_len, longest visible history), newest first."""
        h = req.hist_len[idx]  # [B]
        n_vis = np.minimum(h, max_len)  # [B]
        L = max(int(n_vis.max(initial=0)), 1)
        j = np.arange(L)[None, :]  # [1, L]
        mask = j < n_vis[:, None]  # [B, L]
        start = self.offsets[req.user_row[idx]]  # [B]
        pos = np.where(mask, start[:, None] + h[:, None] - 1 - j, 0)  # [B, L] behavior index
        seq_items = self.item_raw[self.beh_item_row[pos]]  # [B, L, F_h]
        seq_items[~mask] = 0
        seq_cross = self.beh_cross[pos]  # [B, L, J_s]
        seq_cross[~mask] = 0.0
        seq_ts = np.where(mask, self.beh_ts[pos], 0)  # [B, L]
        sizes = req.sizes[idx]  # [B]
        C = int(sizes.max(initial=1))
        tmask = np.arange(C)[None, :] < sizes[:, None]  # [B, C]
        sample = np.where(tmask, req.sample_idx[np.minimum(req.offsets[idx][:, None] + np.arange(C),
                                                            len(req.sample_idx) - 1)], -1)  # [B, C]
        safe = np.maximum(sample, 0)
        target = self.item_raw[samples.item_row[safe]]  # [B, C, F_h]
        target[~tmask] = 0
        batch = TrainBatch(
            target=torch.from_numpy(target),
            seq_items=torch.from_numpy(seq_items),
            seq_cross=torch.from_numpy(seq_cross),
            seq_ts=torch.from_numpy(seq_ts),
            seq_mask=torch.from_numpy(mask),
            now=torch.from_numpy(req.ts[idx].copy()),
            hist_len=torch.from_numpy(h.copy()),
            target_mask=torch.from_numpy(tmask),
            label=torch.from_numpy(np.where(tmask, samples.label[safe], 0.0).astype(np.float32)),
        )
        return batch, sample


def _col(table, name: str, dtype) -> np.ndarray:
    return table.column(name).to_numpy().astype(dtype, copy=False)


def _rows_of(ids: np.ndarray, sorted_ids: np.ndarray, what: str) -> np.ndarray:
    """Row of each id in a sorted id array; unknown ids are a loud error."""
    rows = np.searchsorted(sorted_ids, ids)
    rows_c = np.minimum(rows, len(sorted_ids) - 1)
    bad = sorted_ids[rows_c] != ids
    if bad.any():
        raise ValueError(f"{bad.sum()} {what} refer to unknown ids, e.g. {ids[bad][:5].tolist()}")
    return rows_c


def fingerprint(data_dir: str | Path) -> str:
    h = hashlib.sha256()
    for name in ("schema.json", "items.parquet", "behaviors.parquet", "samples.parquet"):
        with open(Path(data_dir) / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def load_dataset(data_dir: str | Path) -> TrainingData:
    d = Path(data_dir)
    for name in ("schema.json", "items.parquet", "behaviors.parquet", "samples.parquet"):
        if not (d / name).is_file():
            raise ValueError(f"data directory {d} lacks {name} (see docs/contracts.md)")
    raw = json.loads((d / "schema.json").read_text())
    schema = FeatureSchema.from_dict(raw)
    items = pq.read_table(d / "items.parquet")
    item_ids = _col(items, "item_id", np.int64)
    order = np.argsort(item_ids, kind="stable")
    item_raw = np.stack([_col(items, f, np.int64) for f in schema.inherent_names], axis=1)[order]  # [n, F_h]
    item_ids = item_ids[order]
    if (np.diff(item_ids) == 0).any():
        raise ValueError(f"items.parquet in {d} has duplicate item ids")

    beh = pq.read_table(d / "behaviors.parquet")
    b_user = _col(beh, "user_id", np.int64)
    b_ts = _col(beh, "ts", np.int64)
    if len(b_user) > 1 and ((np.diff(b_user) < 0) | ((np.diff(b_user) == 0) & (np.diff(b_ts) < 0))).any():
        raise ValueError(f"behaviors.parquet in {d} is not sorted by (user_id, ts)")
    user_ids, first = np.unique(b_user, return_index=True)
    offsets = np.append(first, len(b_user)).astype(np.int64)
    cross_names = schema.stored_cross_names()
    beh_cross = (np.stack([_col(beh, c, np.float32) for c in cross_names], axis=1) if cross_names
                 else np.zeros((len(b_user), 0), np.float32))

    smp = pq.read_table(d / "samples.parquet")
    s_user = _col(smp, "user_id", np.int64)
    s_split = np.asarray(smp.column("split").to_pylist())
    core = {"user_id", "item_id", "ts", "label", "hist_len", "split"}
    user_row = _rows_of(s_user, user_ids, "samples' user_id")
    hist_len = _col(smp, "hist_len", np.int64)
    n_beh = np.diff(offsets)[user_row]
    if ((hist_len < 0) | (hist_len > n_beh)).any():
        raise ValueError(f"samples.parquet in {d}: hist_len outside [0, user's behaviors]")
    all_samples = Samples(
        user_row=user_row, user_id=s_user,
        item_row=_rows_of(_col(smp, "item_id", np.int64), item_ids, "samples' item_id"),
        ts=_col(smp, "ts", np.int64), label=_col(smp, "label", np.float32), hist_len=hist_len,
        extra={c: smp.column(c).to_numpy() for c in smp.column_names if c not in core},
    )
    unknown = set(np.unique(s_split)) - set(SPLITS)
    if unknown:
        raise ValueError(f"samples.parquet in {d}: unknown split values {sorted(unknown)}")
    data = TrainingData(
        schema=schema, meta=raw.get("meta", {}), item_raw=item_raw, user_ids=user_ids, offsets=offsets,
        beh_item_row=_rows_of(_col(beh, "item_id", np.int64), item_ids, "behaviors' item_id"),
        beh_ts=b_ts, beh_cross=beh_cross,
        splits={s: all_samples.subset(np.flatnonzero(s_split == s)) for s in SPLITS},
        fingerprint=fingerprint(d),
    )
    log.info("loaded %s: %d items, %d users, %d behaviors, samples %s", d, len(item_ids), len(user_ids),
             len(b_ts), {s: len(v) for s, v in data.splits.items()})
    return data
