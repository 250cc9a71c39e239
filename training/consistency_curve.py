"""Paper Fig. 4: hits of the ESU oracle's top-k against the GSU's output size.

For one trained model and each GSU output size K in `sizes`, the mean number of the oracle's top-k
(k = cfg.top_k = 100) that the model's GSU retrieves when it keeps K behaviors. The oracle is the
model's own ESU over the full sequence, under each reading of training.consistency (ties broken by
the GSU's rule); the GSU is the model's own retrieval (training.long_sequence_baselines.
selection_ranking): TWIN's round-robin union of its alpha, SIM Hard's newest same-category
behaviors, SIM Soft's inner products, ETA's Hamming distances. Every ranking is computed once at the
largest size; a smaller K is its first K (each of those GSUs is a prefix of its longer output).
"""
from __future__ import annotations

import numpy as np
import torch

from training.consistency import READINGS, oracle_hits
from training.dataset import TrainingData
from training.long_sequence_baselines import selection_ranking
from twin.model import TwinCTR

GSU_SIZES = (10, 30, 100, 300, 1_000, 3_000, 10_000)


@torch.no_grad()
def hits_by_size(model: TwinCTR, data: TrainingData, max_len: int, max_targets: int, sizes=GSU_SIZES,
                 n_requests: int = 32, seed: int = 0, batch_requests: int = 4) -> dict[str, dict[int, float]]:
    """-> {reading: {K: mean hits}} over the test targets of up to n_requests requests with more than
    top_k visible behaviors (the same choice of requests for every model of a data set and seed)."""
    model.eval()
    k = model.cfg.top_k
    req = data.requests("test", max_targets)
    eligible = np.flatnonzero(np.minimum(req.hist_len, max_len) > k)
    chosen = np.random.default_rng(seed).permutation(eligible)[:n_requests]
    sizes = [s for s in sizes if s <= max_len]
    hits: dict[str, dict[int, list[np.ndarray]]] = {r: {s: [] for s in sizes} for r in READINGS}
    for lo in range(0, len(chosen), batch_requests):
        b, idx = data.make_batch(data.split("test"), req, chosen[lo:lo + batch_requests], max_len)
        weights, _ = model.esu_oracle_weights(b)  # [B, A, C, L]
        ranking = selection_ranking(model, b, max(sizes))  # [B, C, max size]
        real = torch.from_numpy(idx >= 0)  # [B, C]
        for r in READINGS:
            for s in sizes:
                h = oracle_hits(weights, ranking[..., :s], b.seq_mask, k, r)  # [B, C]
                hits[r][s].append(h[real].numpy())
    return {r: {s: float(np.concatenate(v).mean()) if v else float("nan") for s, v in per.items()}
            for r, per in hits.items()}
