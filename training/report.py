"""The training report: models beside the plain references, where TWIN stands, validation curves."""
from __future__ import annotations

import math
from pathlib import Path

from training.baselines import Reference
from training.trainer import TARGET_KIND_NAMES, VariantResult


def _f(x: float | None, fmt: str = ".4f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def models_table(results: list[VariantResult]) -> str:
    kinds = [f"auc_{n}" for n in TARGET_KIND_NAMES.values() if any(f"auc_{n}" in r.test for r in results)]
    head = ["model", "test AUC", "test GAUC", "log-loss", "consistency sum / per-head / max",
            *[k.replace("auc_", "AUC ") for k in kinds], "best val AUC", "steps", "early stop", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        t = r.test
        cons = " / ".join(_f(t.get(f"consistency_{x}"), ".1f") for x in ("sum", "per_head", "max"))
        cells = [r.variant, _f(t["auc"]), _f(t["gauc"]), _f(t["logloss"]), cons, *[_f(t.get(k)) for k in kinds],
                 _f(r.best_val_auc), str(r.steps), "yes" if t.get("early_stopped") else "no (epoch cap)",
                 f"{r.train_seconds:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def references_table(refs: list[Reference]) -> str:
    lines = ["| reference (same data, same test split) | test AUC | test GAUC | log-loss |", "|---|---|---|---|"]
    for r in refs:
        lines.append(f"| {r.name} | {_f(r.test['auc'])} | {_f(r.test['gauc'])} | {_f(r.test.get('logloss'))} |")
    return "\n".join(lines)


def standing(results: list[VariantResult], refs: list[Reference]) -> str:
    """Where TWIN stands: beside the best plain reference, and the share of the recent-100 -> oracle
    gap it closes (AUC)."""
    by = {r.variant: r.test for r in results}
    if "twin" not in by:
        return ""
    t = by["twin"]["auc"]
    plain = [r for r in refs if not r.name.startswith("oracle")]
    lines = []
    if plain:
        best = max(plain, key=lambda r: r.test["auc"])
        verdict = "beats" if t > best.test["auc"] else "does NOT beat"
        lines.append(f"* TWIN {verdict} the best plain reference, {best.name}: AUC {t:.4f} vs {best.test['auc']:.4f}"
                     f" (GAUC {by['twin']['gauc']:.4f} vs {best.test['gauc']:.4f}).")
    oracle = next((r for r in refs if r.name.startswith("oracle")), None)
    if "recent" in by:
        rec = by["recent"]["auc"]
        lines.append(f"* TWIN vs the recent-100 model: AUC {t:.4f} vs {rec:.4f}.")
        if oracle is not None and oracle.test["auc"] > rec:
            share = (t - rec) / (oracle.test["auc"] - rec)
            lines.append(f"* Of the gap between recent-100 ({rec:.4f}) and the oracle ceiling ({oracle.test['auc']:.4f}), "
                         f"TWIN closes {100 * share:.0f}% (target: at least 50%).")
    return "\n".join(lines)


def curves_table(results: list[VariantResult]) -> str:
    lines = ["| model | validation AUC by evaluation (epoch: AUC, lr) |", "|---|---|"]
    for r in results:
        pts = ", ".join(f"{h['epoch']:.2f}: {h['val_auc']:.4f} ({h['lr']:.1e})" for h in r.history)
        lines.append(f"| {r.variant} | {pts} |")
    return "\n".join(lines)


def plot_curves(results: list[VariantResult], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        ax.plot([h["epoch"] for h in r.history], [h["val_auc"] for h in r.history], marker="o", ms=3, label=r.variant)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation AUC")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(title: str, results: list[VariantResult], refs: list[Reference], notes: str = "") -> str:
    filled = results[0].filled_rows if results else {}
    filled_s = ", ".join(f"{k} {v}" for k, v in filled.items() if v) or "none"
    parts = [f"### {title}", "", models_table(results), "", references_table(refs), "", standing(results, refs), "",
             "consistency: of the model's own ESU top-k over the full sequence, how many its GSU selection holds "
             "(training.consistency: sum over heads = the main reading, per-head mean, max over heads).",
             f"Embedding rows training never read, filled from trained ones after training ({results[0].variant if results else ''}): "
             f"{filled_s}.", "", "Validation curves:", "", curves_table(results)]
    if notes:
        parts += ["", notes]
    return "\n".join(parts) + "\n"
