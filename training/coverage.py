"""Every embedding row that serving can read is trained, or given a value derived from trained rows.

Training only moves the rows its inputs use. A row it never uses keeps its random init, and serving
may still read it: a history-length bucket above the longest training history (serving reads up to
10^5 behaviors), a new item id, a duration bucket no training item falls in. Random rows are noise
in alpha and in the tower, so after training each unused row is set from the used ones:

  * bucketized (ordinal) features: the nearest used bucket (a history of 60,000 behaves like the
    longest trained one, 16,384+, not like a random vector);
  * categorical ids: the mean of the used rows (an unknown item looks like an average item).

`RowUsage.record(model, batch)` marks the rows a training batch reads, through the model's own id
functions (`twin.features`) and with padding excluded; `fill_unused_rows` applies the rule above.
"""
from __future__ import annotations

import torch

from twin.config import FeatureSpec
from twin.features import FeatureGroupEmbedding, context_raw, cross_ids, feature_ids
from twin.model import TrainBatch, TwinCTR


class RowUsage:
    """Bool masks [vocab] per table of the model's three embedding groups: which rows training read."""

    def __init__(self, model: TwinCTR):
        self.groups: dict[str, FeatureGroupEmbedding] = {"inherent": model.inherent_emb, "cross": model.cross_emb}
        if model.context_emb is not None:
            self.groups["context"] = model.context_emb
        self.used = {g: [torch.zeros(s.vocab, dtype=torch.bool) for s in emb.specs] for g, emb in self.groups.items()}

    @torch.no_grad()
    def record(self, model: TwinCTR, b: TrainBatch) -> None:
        schema = model.cfg.schema
        seq_items = b.seq_items[b.seq_mask]  # [n, F_h] valid behaviors only
        targets = b.target[b.target_mask] if b.target_mask is not None else b.target.reshape(-1, b.target.shape[-1])
        for j, spec in enumerate(schema.inherent):
            for raw in (seq_items[:, j], targets[:, j]):
                self.used["inherent"][j][feature_ids(spec, raw)] = True
        for j, ids in enumerate(cross_ids(schema, b.seq_cross, b.seq_ts, b.now)):
            self.used["cross"][j][ids[b.seq_mask]] = True
        if "context" in self.used:
            raw = context_raw(schema, b.now, b.hist_len)  # [B, n_context]
            for j, spec in enumerate(schema.context):
                self.used["context"][j][feature_ids(spec, raw[:, j])] = True

    def unused_counts(self) -> dict[str, int]:
        return {f"{g}.{spec.name}": int((~m).sum()) for g, emb in self.groups.items()
                for spec, m in zip(emb.specs, self.used[g])}


def _fill_value(spec: FeatureSpec, weight: torch.Tensor, used: torch.Tensor) -> torch.Tensor:
    """weight [V, e], used bool [V] (some True) -> the table with every unused row filled."""
    out = weight.clone()
    unused = (~used).nonzero().flatten()
    if spec.boundaries:  # ordinal: the nearest used bucket (ties: the lower one)
        have = used.nonzero().flatten()  # [u] ascending
        right = torch.searchsorted(have, unused).clamp_max(len(have) - 1)
        left = (right - 1).clamp_min(0)
        nearest = torch.where((unused - have[left]).abs() <= (have[right] - unused).abs(), have[left], have[right])
        out[unused] = weight[nearest]
    else:
        out[unused] = weight[used].mean(0)
    return out


@torch.no_grad()
def fill_unused_rows(usage: RowUsage) -> dict[str, int]:
    """Set every unused row from the used ones (module docstring); returns rows filled per table.
    A table no training input used at all is left as it is (reported with its full vocab)."""
    filled = {}
    for g, emb in usage.groups.items():
        for spec, table, used in zip(emb.specs, emb.tables, usage.used[g]):
            n = int((~used).sum())
            if n and used.any():
                table.weight.copy_(_fill_value(spec, table.weight, used))
            filled[f"{g}.{spec.name}"] = n
    return filled
