"""Training and evaluation of TWIN and its baselines on one data set.

`run_comparison` trains each variant on the same data with the same seed and settings:
  * "twin":    CP-GSU over the whole history (up to `max_len`), the paper's model;
  * "recent":  the same model restricted to the `top_k` most recent behaviors (cfg.gsu="recent");
               it reads only those, so its sequences are cut to top_k (exactly what it would use);
  * "nocross": TWIN without the cross-feature bias b_a in alpha (paper sec. 4.4 ablation).
Each is trained with Adam and log-loss, validated a few times per epoch; training stops when the
validation AUC has not improved for `patience` evaluations and the best state is kept. The test
split then gives AUC, GAUC, log-loss and the GSU consistency of paper Fig. 4.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from training.dataset import TrainingData
from training.metrics import auc, gauc, logloss
from twin.config import TwinConfig
from twin.model import TwinCTR

log = logging.getLogger(__name__)

VARIANTS = ("twin", "recent", "nocross")
TARGET_KIND_NAMES = {0: "active", 1: "dormant", 2: "popular", 3: "uniform"}


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 2
    batch_size: int = 256
    lr: float = 1e-3
    max_len: int = 10_000  # behaviors the TWIN GSU reads per sample (newest first)
    seed: int = 0
    patience: int = 2  # validations without a better val AUC before stopping
    evals_per_epoch: int = 2
    eval_batch_size: int = 512
    bucket: int = 20  # batches per length-sorting window (see TrainingData.batches)
    consistency_samples: int = 2_000  # test samples (with more than top_k behaviors) for Fig. 4
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


def make_config(data: TrainingData, variant: str, settings: TrainSettings) -> TwinConfig:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
    cfg = TwinConfig(schema=data.schema, max_len=settings.max_len, **settings.arch)
    if variant == "recent":
        cfg = TwinConfig(**{**cfg.__dict__, "gsu": "recent"})
    elif variant == "nocross":
        cfg = TwinConfig(**{**cfg.__dict__, "cross_bias": False})
    return cfg


def _read_len(cfg: TwinConfig) -> int:
    """Behaviors the model actually reads: the recent baseline needs only its top_k newest."""
    return min(cfg.max_len, max(cfg.top_k, cfg.short_len)) if cfg.gsu == "recent" else cfg.max_len


@torch.no_grad()
def predict(model: TwinCTR, data: TrainingData, split: str, batch_size: int, max_len: int,
            progress: bool = False) -> np.ndarray:
    """CTRs [n] for the samples of `split`, in split order."""
    model.eval()
    out = []
    n = len(data.split(split))
    for b in tqdm(data.batches(split, batch_size, max_len), total=-(-n // batch_size), desc=f"eval {split}",
                  leave=False, disable=not progress):
        out.append(torch.sigmoid(model(b)).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


@torch.no_grad()
def consistency(model: TwinCTR, data: TrainingData, split: str, settings: TrainSettings) -> float:
    """Paper Fig. 4: mean number of the model's own full-sequence ESU top-`top_k` behaviors that
    its GSU selection retrieves, over samples with more than top_k behaviors (out of top_k)."""
    model.eval()
    s = data.split(split)
    k = model.cfg.top_k
    idx = np.flatnonzero(np.minimum(s.hist_len, settings.max_len) > k)
    if len(idx) == 0:
        return float("nan")
    idx = np.random.default_rng(settings.seed).permutation(idx)[:settings.consistency_samples]
    hits = []
    for lo in range(0, len(idx), settings.eval_batch_size // 2):
        b = data.make_batch(s, idx[lo:lo + settings.eval_batch_size // 2], settings.max_len)
        h, _ = model.gsu_consistency(b, oracle_k=k)  # [B] hits out of min(k, L) = k here
        hits.append(h.numpy())
    return float(np.concatenate(hits).mean())


def evaluate(model: TwinCTR, data: TrainingData, split: str, settings: TrainSettings,
             with_consistency: bool = True) -> dict[str, float]:
    s = data.split(split)
    p = predict(model, data, split, settings.eval_batch_size, _read_len(model.cfg), settings.progress)
    res = {"auc": auc(s.label, p), "gauc": gauc(s.label, p, s.user_id), "logloss": logloss(s.label, p),
           "n": float(len(s))}
    kind = s.extra.get("target_kind")
    if kind is not None:  # synthetic data: how well each kind of target is ranked
        for k, name in TARGET_KIND_NAMES.items():
            m = kind == k
            if m.any() and 0 < s.label[m].mean() < 1:
                res[f"auc_{name}"] = auc(s.label[m], p[m])
    if with_consistency:
        res["consistency"] = consistency(model, data, split, settings)
    return res


def fit(model: TwinCTR, data: TrainingData, settings: TrainSettings, name: str = "") -> dict:
    """Adam on log-loss with validation-based early stopping; leaves the best state in `model`."""
    torch.manual_seed(settings.seed)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    loss_fn = nn.BCEWithLogitsLoss()
    read_len = _read_len(model.cfg)
    n_train = len(data.split("train"))
    steps_per_epoch = -(-n_train // settings.batch_size)
    eval_every = max(1, steps_per_epoch // max(1, settings.evals_per_epoch))
    best = {"auc": -1.0, "state": None, "step": 0}
    history: list[dict[str, float]] = []
    step, bad, t0 = 0, 0, time.perf_counter()
    stop = False
    for epoch in range(settings.epochs):
        model.train()
        bar = tqdm(data.batches("train", settings.batch_size, read_len, shuffle=True,
                                seed=settings.seed + epoch, bucket=settings.bucket),
                   total=steps_per_epoch, desc=f"{name} epoch {epoch + 1}/{settings.epochs}",
                   disable=not settings.progress)
        for b in bar:
            loss = loss_fn(model(b), b.label)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            bar.set_postfix(loss=f"{loss.item():.4f}", best_val_auc=f"{best['auc']:.4f}")
            if step % eval_every == 0 or step == steps_per_epoch * (epoch + 1):
                s = data.split("val")
                val_auc = auc(s.label, predict(model, data, "val", settings.eval_batch_size, read_len))
                history.append({"step": step, "epoch": step / steps_per_epoch,
                                "train_loss": float(loss.item()), "val_auc": val_auc})
                log.info("%s step %d: val AUC %.4f", name, step, val_auc)
                if val_auc > best["auc"]:
                    best = {"auc": val_auc, "state": copy.deepcopy(model.state_dict()), "step": step}
                    bad = 0
                else:
                    bad += 1
                    if bad >= settings.patience:
                        stop = True
                        break
                model.train()
        bar.close()
        if stop:
            break
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    return {"best_val_auc": best["auc"], "best_step": best["step"], "steps": step,
            "seconds": time.perf_counter() - t0, "history": history}


def run_comparison(data: TrainingData, variants: tuple[str, ...], settings: TrainSettings) -> list[VariantResult]:
    results = []
    for v in variants:
        torch.manual_seed(settings.seed)  # same initial weights for every variant
        model = TwinCTR(make_config(data, v, settings))
        f = fit(model, data, settings, name=v)
        test = evaluate(model, data, "test", settings)
        log.info("%s test: %s", v, test)
        results.append(VariantResult(v, model, test, f["best_val_auc"], f["steps"], f["seconds"], f["history"]))
    return results


def markdown_table(results: list[VariantResult], title: str = "") -> str:
    kinds = [f"auc_{n}" for n in TARGET_KIND_NAMES.values() if any(f"auc_{n}" in r.test for r in results)]
    head = ["model", "test AUC", "test GAUC", "test log-loss", "consistency@k", *[k.replace("auc_", "AUC ") for k in kinds],
            "best val AUC", "steps", "train s"]
    lines = ([f"### {title}", ""] if title else []) + ["| " + " | ".join(head) + " |",
                                                      "|" + "---|" * len(head)]
    for r in results:
        t = r.test
        cells = [r.variant, f"{t['auc']:.4f}", f"{t['gauc']:.4f}", f"{t['logloss']:.4f}",
                 f"{t.get('consistency', float('nan')):.1f}", *[f"{t.get(k, float('nan')):.4f}" for k in kinds],
                 f"{r.best_val_auc:.4f}", str(r.steps), f"{r.train_seconds:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "consistency@k: of the model's own ESU top-k over the full sequence (paper Fig. 4), how many its "
              "GSU selection holds (mean over test samples with more than k behaviors)."
              + (" AUC <kind>: test AUC within one kind of target (synthetic data)." if kinds else "")]
    return "\n".join(lines) + "\n"


def settings_dict(settings: TrainSettings) -> dict:
    return asdict(settings)
