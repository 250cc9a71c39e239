"""The reproduce report: mean ± std over seeds beside the paper's Table 4, ties, Fig. 4's curves.

A difference between two models smaller than the spread (the larger of their two sample standard
deviations over the seeds) is called a tie.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.consistency import READINGS

# TWIN paper Table 4 (AUC, GAUC) and Fig. 4 (hits of the ESU's top-100 at GSU output 100)
PAPER_TABLE4 = {"twin": (0.7962, 0.7336), "sim_soft": (0.7939, 0.7299), "sdim": (0.7919, 0.7267),
                "eta": (0.7910, 0.7243), "sim_hard": (0.7901, 0.7224), "din": (0.7873, 0.7191),
                "avg_pooling": (0.7855, 0.7168)}
PAPER_FIG4 = {"twin": 94, "sim_hard": 40}
LABELS = {"twin": "TWIN", "no_full_lse": "TWIN w/o full-sequence LSE", "nocross": "TWIN w/o cross bias",
          "twin_inconsistent": "TWIN, inconsistent GSU", "sim_soft": "SIM Soft", "sdim": "SDIM", "eta": "ETA",
          "sim_hard": "SIM Hard", "din": "DIN (newest 100)", "avg_pooling": "Avg-Pooling"}


@dataclass
class Run:
    dataset: str
    model: str
    seed: int
    test: dict[str, float]
    train_seconds: float
    steps: int
    error: str = ""
    curve: dict[str, dict[int, float]] | None = None  # reading -> GSU size -> mean hits (first seed)


@dataclass
class Stat:
    mean: float
    std: float  # sample std over seeds (0 with one seed)
    n: int

    def __str__(self) -> str:
        return "-" if math.isnan(self.mean) else f"{self.mean:.4f} ± {self.std:.4f}"


def stat(values: list[float]) -> Stat:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
    if len(v) == 0:
        return Stat(float("nan"), float("nan"), 0)
    return Stat(float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v))


def compare(a: Stat, b: Stat) -> str:
    """'>' if a beats b by more than the spread, '<' if b beats a, '=' (a tie) otherwise; '?' when either
    has fewer than two seeds: with no spread, no difference can be told from noise."""
    if min(a.n, b.n) < 2:
        return "?"
    d = a.mean - b.mean
    return "=" if abs(d) < max(a.std, b.std) else (">" if d > 0 else "<")


def _stats(runs: list[Run], dataset: str, metric: str) -> dict[str, Stat]:
    models = dict.fromkeys(r.model for r in runs if r.dataset == dataset)
    return {m: stat([r.test.get(metric, float("nan")) for r in runs if r.dataset == dataset and r.model == m])
            for m in models}


def ordering(st: dict[str, Stat]) -> str:
    """Models by mean, best first; neighbours within the spread are joined by '≈' (a tie), neighbours
    that cannot be judged (one seed) by '?'."""
    ranked = sorted((m for m in st if st[m].n), key=lambda m: -st[m].mean)
    out = LABELS.get(ranked[0], ranked[0]) if ranked else ""
    for prev, m in zip(ranked, ranked[1:]):
        out += {"=": " ≈ ", "?": " ? "}.get(compare(st[prev], st[m]), " > ") + LABELS.get(m, m)
    return out


def paper_agreement(st: dict[str, Stat]) -> tuple[dict[str, int], list[str]]:
    """Over the pairs of Table 4's models that both ran: how many orders agree with the paper's, tie, or
    are reversed (the reversed ones listed)."""
    names = [m for m in PAPER_TABLE4 if m in st and st[m].n]  # the paper's order, best first
    counts, reversed_pairs = {"agree": 0, "tie": 0, "reversed": 0, "unjudged": 0}, []
    for hi, lo in itertools.combinations(names, 2):
        c = compare(st[hi], st[lo])
        key = {">": "agree", "=": "tie", "<": "reversed", "?": "unjudged"}[c]
        counts[key] += 1
        if key == "reversed":
            reversed_pairs.append(f"{LABELS[lo]} > {LABELS[hi]}")
    return counts, reversed_pairs


VERDICT = {"=": "tie", ">": "better", "<": "worse", "?": "?"}  # a model's AUC against TWIN's


def dataset_section(name: str, runs: list[Run], refs) -> str:
    auc, gauc = _stats(runs, name, "auc"), _stats(runs, name, "gauc")
    cons = {r: _stats(runs, name, f"consistency_{r}") for r in READINGS}
    secs = _stats(runs, name, "_seconds")
    seeds = sorted({r.seed for r in runs if r.dataset == name})
    judged = "." if len(seeds) > 1 else ": one seed, so no difference is judged ('?')."
    lines = [f"### {name}", "", f"Seeds {seeds}{judged}", "",
             "| model | paper AUC / GAUC | AUC (mean ± std) | GAUC (mean ± std) | AUC vs TWIN | consistency @k "
             "sum / per-head / max | train s | early-stopped | failed |", "|---|---|---|---|---|---|---|---|---|"]
    twin = auc.get("twin")
    for m in sorted(auc, key=lambda m: -auc[m].mean if auc[m].n else math.inf):
        paper = PAPER_TABLE4.get(m)
        vs = "-" if twin is None or m == "twin" or not auc[m].n else \
            VERDICT[compare(auc[m], twin)] + f" ({auc[m].mean - twin.mean:+.4f})"
        c = " / ".join("-" if math.isnan(cons[r][m].mean) else f"{cons[r][m].mean:.1f}" for r in READINGS)
        mine = [r for r in runs if r.dataset == name and r.model == m]
        failed = sum(1 for r in mine if r.error)
        stopped = f"{sum(1 for r in mine if r.test.get('early_stopped'))}/{len(mine)}"
        lines.append(f"| {LABELS.get(m, m)} | {f'{paper[0]:.4f} / {paper[1]:.4f}' if paper else '-'} | {auc[m]} | "
                     f"{gauc[m]} | {vs} | {c} | {secs[m].mean:.0f} | {stopped} | {failed or ''} |")
    for ref in refs:
        lines.append(f"| *reference: {ref.name}* | - | {ref.test['auc']:.4f} | {ref.test['gauc']:.4f} | - | - | - | - | |")
    counts, rev = paper_agreement(auc)
    lines += ["", f"* by AUC: {ordering(auc)}", f"* by GAUC: {ordering(gauc)}",
              f"* pairs of Table 4's models (AUC): {counts['agree']} ordered as in the paper, {counts['tie']} ties, "
              f"{counts['reversed']} reversed" + (f" ({'; '.join(rev)})" if rev else "") +
              (f", {counts['unjudged']} not judged (one seed)" if counts["unjudged"] else "")]
    return "\n".join(lines)


def curve_section(runs: list[Run], k: int) -> str:
    with_curve = [r for r in runs if r.curve]
    if not with_curve:
        return ""
    sizes = sorted({s for r in with_curve for s in r.curve["sum"]})
    at = k if k in sizes else max(sizes)
    lines = [f"### Fig. 4: hits of the ESU oracle's top-{k} (sum over heads) by GSU output size K", "",
             "| data set | model | " + " | ".join(f"K={s:,}" for s in sizes) +
             f" | per-head @{at} | max @{at} | paper @100 (k = 100) |",
             "|---|---|" + "---|" * (len(sizes) + 3)]
    for r in with_curve:
        cells = [f"{r.curve['sum'].get(s, float('nan')):.1f}" for s in sizes]
        lines.append(f"| {r.dataset} | {LABELS.get(r.model, r.model)} | " + " | ".join(cells) +
                     f" | {r.curve['per_head'][at]:.1f} | {r.curve['max'][at]:.1f}"
                     f" | {PAPER_FIG4.get(r.model, '-')} |")
    return "\n".join(lines)


def plot_curves(runs: list[Run], path: Path, k: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(r.dataset for r in runs if r.curve))
    fig, axes = plt.subplots(1, max(1, len(sets)), figsize=(max(7, 5 * len(sets)), 4.3), squeeze=False)
    for ax, name in zip(axes[0], sets):
        for i, r in enumerate(r for r in runs if r.curve and r.dataset == name):
            color = f"C{i}"
            for reading, style in (("sum", "-"), ("per_head", ":")):
                xs = sorted(r.curve[reading])
                ax.plot(xs, [r.curve[reading][x] for x in xs], style, marker="o", ms=3, color=color,
                        label=f"{LABELS.get(r.model, r.model)} ({reading.replace('_', '-')})")
            if r.model in PAPER_FIG4 and k == 100:
                ax.plot([100], [PAPER_FIG4[r.model]], "*", ms=10, color=color)
        ax.set_xscale("log")
        ax.set_xlabel("GSU output size K")
        ax.set_ylabel(f"hits of the ESU's top-{k}")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    stars = "; stars: the paper's TWIN 94 and SIM Hard 40 at K=100" if k == 100 else f" at k = {k}; dotted: per-head"
    fig.suptitle(f"GSU-ESU consistency (paper Fig. 4{stars})", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, sets, runs: list[Run], plan, wall_s: float) -> None:
    for r in runs:  # training time rides with the metrics so one helper aggregates both
        r.test["_seconds"] = r.train_seconds
    failures = [f"* {r.model} on {r.dataset}, seed {r.seed}: {r.error}" for r in runs if r.error]
    parts = ["# Reproduce: TWIN Table 4 and Fig. 4 on our data", "",
             f"{len(runs)} trainings in {wall_s / 60:.1f} min; planned seeds {list(plan.seeds)} (each data set says "
             f"which ran); generated data sets at "
             f"{plan.users} users of the `{plan.preset}` preset; settings `{plan.settings}`.",
             "Ties: a difference smaller than the larger of the two standard deviations over seeds. References are "
             "fitted once (deterministic).", ""]
    parts += [dataset_section(ds.name, runs, ds.refs) + "\n" for ds in sets]
    k = plan.settings.arch.get("top_k", 100)
    parts += [curve_section(runs, k), "", "![consistency](consistency.png)", ""]
    parts += ["## Failed", *failures] if failures else ["No model failed to train."]
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text("\n".join(parts) + "\n")
    plot_curves(runs, out / "consistency.png", k)
