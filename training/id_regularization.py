"""DIN's mini-batch aware regularisation of the id embedding tables (Zhou et al., KDD 2018, sec. 4.1).

The tables of categorical ids (item, author, category) hold most of the parameters and most of the
overfitting: on the lifelong preset a training item is a target about 8 times in an epoch, so its
64-dim row can memorise those labels (validation AUC peaked after 2 epochs and fell after). An L2
penalty on the whole table every step would cost a pass over 3.4M parameters and pull rows no batch
read; DIN penalises only the rows a batch reads, each scaled by 1 / n_j, its occurrences in the
training data, so that over an epoch every row gets about the same pull whatever its popularity:

    grad(w_j) += lambda * w_j / n_j   for every row j the batch reads.

n_j counts the row's reads by training requests: as a target, and as a behavior in the history the
model reads (the newest `read_len` of each training user's).
"""
from __future__ import annotations

import numpy as np
import torch

from training.dataset import TrainingData
from twin.features import feature_ids
from twin.model import TrainBatch, TwinCTR


class MiniBatchAwareL2:
    def __init__(self, model: TwinCTR, data: TrainingData, lam: float, read_len: int):
        self.lam = lam
        schema = model.cfg.schema
        self.cols = [j for j, spec in enumerate(schema.inherent) if not spec.boundaries]  # categorical ids
        train = data.split("train")
        users = np.unique(train.user_row)
        lo = np.maximum(data.offsets[users + 1] - read_len, data.offsets[users])
        beh = np.concatenate([np.arange(a, b) for a, b in zip(lo, data.offsets[users + 1])])
        item_rows = np.concatenate([data.beh_item_row[beh], train.item_row])  # every read of an item
        self.inv_n = {}  # column -> float32 [vocab] 1 / n_j (0 where never read)
        for j in self.cols:
            spec = schema.inherent[j]
            ids = feature_ids(spec, torch.from_numpy(data.item_raw[item_rows, j])).numpy()
            n = np.bincount(ids, minlength=spec.vocab).astype(np.float32)
            self.inv_n[j] = torch.from_numpy(np.divide(1.0, n, out=np.zeros_like(n), where=n > 0))

    @torch.no_grad()
    def apply(self, model: TwinCTR, b: TrainBatch) -> None:
        """After backward: add the penalty's gradient to the rows this batch read."""
        if not self.lam:
            return
        schema = model.cfg.schema
        seq_items = b.seq_items[b.seq_mask]  # [n, F_h] valid behaviors
        targets = b.target[b.target_mask] if b.target_mask is not None else b.target.reshape(-1, b.target.shape[-1])
        for j in self.cols:
            table = model.inherent_emb.tables[j].weight  # [V, e]
            if table.grad is None:
                continue
            rows = torch.unique(torch.cat([feature_ids(schema.inherent[j], seq_items[:, j]),
                                           feature_ids(schema.inherent[j], targets[:, j])]))  # [r]
            table.grad[rows] += self.lam * self.inv_n[j][rows, None] * table[rows]
