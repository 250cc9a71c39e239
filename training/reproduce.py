"""`make reproduce`: the paper's offline study (TWIN Table 4 and Fig. 4) on our data, over seeds.

    python -m training.reproduce                 # the full run -> reports/reproduce/{table.md, consistency.png}
    python -m training.reproduce --smoke         # CI-sized: tiny data, 2 seeds, exit 1 if a model fails to train

Every model of MODELS (TWIN, its ablations and the long-sequence baselines of
training/long_sequence_baselines.py) is trained on each data set (the `lifelong` generator preset of
both families at `users` users, and MovieLens ml-latest-small) once per seed, with the same settings;
a seed sets the initial weights and the batch order, the data stay the same. The plain references of
training/baselines.py (oracle ceiling, counting, regressions) are fitted once per data set. The first
seed's TWIN, SIM Hard, SIM Soft and ETA also give Fig. 4's curve (training/consistency_curve.py).
The trainings run two at a time in single-thread worker processes (training/parallel_runs.py: ~2x the
throughput of one two-thread process on the 2-core box; a seed gives the same bits at the same
thread count, and 1 vs 2 threads differ only in float summation order).

A model "fails to train" when its training raises or its test AUC is not above chance (0.5) or not
finite; the run continues with the others and exits 1 at the end.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from training import baselines, movielens, synthetic, synthetic_topics
from training.consistency_curve import hits_by_size
from training.dataset import TrainingData, load_dataset
from training.parallel_runs import run_parallel
from training.reproduce_report import Run, write_report
from training.trainer import TrainSettings, run_comparison

log = logging.getLogger(__name__)

# Table 4's models, then the ablations; the paper's names are in training/reproduce_report.PAPER_TABLE4.
MODELS = ("twin", "no_full_lse", "nocross", "twin_inconsistent", "sim_soft", "sdim", "eta", "sim_hard", "din",
          "avg_pooling")
CURVE_MODELS = ("twin", "sim_hard", "sim_soft", "eta")  # Fig. 4's
GENERATORS = {"categories": synthetic, "topics": synthetic_topics}


@dataclass(frozen=True)
class Plan:
    """How big a run is. FULL: 81 trainings in 88.1 min on the idle 2-core box in two single-thread workers
    (measured, docs/benchmarks.md 2026-12-02 (noon)); one two-thread process would take ~2.5 h."""

    users: int  # users of each generated data set (the lifelong preset's 2,000 take ~1 min an epoch for TWIN)
    preset: str
    seeds: tuple[int, ...]
    settings: TrainSettings
    # scored targets per user (None: the preset's); the lifelong preset's 256 (`make train`) would
    # quadruple the run's steps
    samples_per_user: int | None = 64
    movielens: bool = True
    families: tuple[str, ...] = tuple(GENERATORS)
    curve_requests: int = 32
    min_auc: float = 0.5  # above chance, or the model failed to train
    models: tuple[str, ...] = MODELS


# Sizing, measured on the idle 2-core box (categories, 400 users, seed 0; docs/benchmarks.md 2026-12-02):
# at the trainer's lr 2e-3 with 100 warm-up steps a 3-epoch TWIN spent 100 of its 240 steps warming up
# (test AUC 0.8226); lr 4e-3 with 20 warm-up steps gave 0.8266 at 3 epochs and 0.8509 at 8 (116 s),
# SIM Hard 0.8821 (early-stopped at 7, 67 s). At 6 epochs in one two-thread process the generated sets
# take ~60 min and MovieLens ~30 min a seed (SDIM 9 min of it): ~2.5 h; two single-thread workers: 88 min.
# The full-sequence LSE ablation (a tie wherever measured, README) is left to --models.
FULL = Plan(users=400, preset="lifelong", seeds=(0, 1, 2),
            models=tuple(m for m in MODELS if m != "no_full_lse"),
            settings=TrainSettings(epochs=6, lr=4e-3, warmup_steps=20, patience=2, evals_per_epoch=1,
                                   max_len=10_000, progress=True, consistency_requests=32))
# Tiny data and a small architecture: every model's code path (retrieval, ESU, hashing, pooling) in CI.
SMOKE = Plan(users=100, preset="tiny", samples_per_user=None, seeds=(0, 1), movielens=False, curve_requests=8,
             settings=TrainSettings(epochs=1, batch_size=96, lr=1e-2, warmup_steps=5, patience=1, evals_per_epoch=1,
                                    max_len=150, progress=False, consistency_requests=8,
                                    arch={"d_k": 8, "d_v": 8, "d_out": 16, "mlp_dims": (32,), "top_k": 20,
                                          "short_len": 10}))


@dataclass
class DataSet:
    name: str
    path: Path
    data: TrainingData | None  # dropped once the references are fitted: the workers load their own
    refs: list = field(default_factory=list)


# Only the order jobs start in (longest first keeps both workers busy to the end): each model's training
# seconds on MovieLens in the 2026-12-02 run, MovieLens ~3x the generated sets' for every model.
COST = {"sdim": 553, "twin_inconsistent": 258, "eta": 206, "twin": 184, "no_full_lse": 180, "nocross": 178,
        "sim_soft": 164, "sim_hard": 139, "din": 96, "avg_pooling": 83}


def prepare(plan: Plan, root: Path) -> list[DataSet]:
    """Generate (once; reused when present) and load the data sets of the plan."""
    out = []
    for family in plan.families:
        gen = GENERATORS[family]
        per_user = {"samples_per_user": plan.samples_per_user} if plan.samples_per_user else {}
        d = root / f"{family}-{plan.preset}-u{plan.users}-s{plan.samples_per_user or 'preset'}"
        if not (d / "samples.parquet").is_file():
            gen.generate(gen.preset(plan.preset, n_users=plan.users, **per_user), d, progress=plan.settings.progress)
        out.append(DataSet(f"{family} {plan.preset} ({plan.users} users)", d, load_dataset(d)))
    if plan.movielens:
        d = root / "movielens"
        if not (d / "samples.parquet").is_file():
            movielens.convert(movielens.DEFAULT_DIR, d)
        out.append(DataSet("MovieLens ml-latest-small", d, load_dataset(d)))
    for ds in out:
        ds.refs = baselines.references(ds.data, seed=0)
        ds.data = None
    return out


_loaded: dict[Path, TrainingData] = {}  # a worker's data set, loaded once (one at a time: memory)


def train_one(name: str, path: Path, model: str, seed: int, plan: Plan) -> Run:
    """One training in a worker process -> its row of the report."""
    settings = dataclasses.replace(plan.settings, seed=seed, progress=False)  # two workers' bars would interleave
    t0 = time.perf_counter()
    try:
        if path not in _loaded:
            _loaded.clear()
            _loaded[path] = load_dataset(path)
        [r] = run_comparison(_loaded[path], (model,), settings)
    except Exception as e:  # noqa: BLE001 - a failed model is a row of the report, then exit 1
        log.exception("%s on %s, seed %d failed", model, name, seed)
        return Run(name, model, seed, {}, time.perf_counter() - t0, 0, f"{type(e).__name__}: {e}")
    auc = r.test.get("auc", float("nan"))
    error = "" if math.isfinite(auc) and auc > plan.min_auc else f"test AUC {auc:.4f} not above {plan.min_auc}"
    curve = None
    if seed == plan.seeds[0] and model in CURVE_MODELS:
        curve = hits_by_size(r.model, r.data, settings.max_len, settings.max_targets,
                             n_requests=plan.curve_requests, seed=seed)
    return Run(name, model, seed, r.test, r.train_seconds, r.steps, error, curve)


def run(plan: Plan, root: Path, out: Path, workers: int, threads: int) -> int:
    """Every (data set, seed, model) of the plan in `workers` processes of `threads` torch threads
    (training/parallel_runs.py: 2 x 1 on the 2-core box), then the report."""
    torch.set_num_threads(workers * threads)  # the references, fitted here before the workers start
    t0 = time.perf_counter()
    sets = prepare(plan, root)
    jobs = [(ds.name, ds.path, m, s, plan) for ds in sets for s in plan.seeds for m in plan.models]
    # longest first: MovieLens (3x the generated sets' steps per model), then by model
    start = sorted(range(len(jobs)), key=lambda i: (jobs[i][0].startswith("MovieLens"), COST.get(jobs[i][2], 0)),
                   reverse=True)
    done: dict[int, Run] = {}
    with tqdm(total=len(jobs), desc="reproduce", unit="model") as bar:
        for j, row, err in run_parallel(train_one, [jobs[i] for i in start], workers, threads):
            name, _, m, s, _ = jobs[start[j]]
            if err is not None:  # the worker died (or the pool broke): a failed row, like a raising model
                row = Run(name, m, s, {}, 0.0, 0, f"worker: {type(err).__name__}: {err}")
            done[start[j]] = row
            if row.error:
                tqdm.write(f"FAILED {m} on {name} (seed {s}): {row.error}")
            bar.set_postfix_str(f"{name}: {m} seed {s} done")
            bar.update()
    runs = [done[i] for i in range(len(jobs))]  # the plan's order, whatever order they finished in
    wall = time.perf_counter() - t0
    write_report(out, sets, runs, plan, wall)
    failed = [r for r in runs if r.error]
    print(f"wrote {out / 'table.md'} and {out / 'consistency.png'}: {len(runs)} trainings in {wall / 60:.1f} min, "
          f"{len(failed)} failed")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.reproduce", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="the CI-sized plan (tiny data, 2 seeds, no MovieLens)")
    ap.add_argument("--out", default=None, help="report folder (default reports/reproduce[-smoke])")
    ap.add_argument("--data-root", default="var/data/reproduce", help="where the data sets are generated")
    ap.add_argument("--users", type=int, help="override the plan's users per generated data set")
    ap.add_argument("--seeds", help="override the plan's seeds, e.g. 0,1,2")
    ap.add_argument("--models", help=f"override the plan's models (from {','.join(MODELS)})")
    ap.add_argument("--sets", help="override the plan's data sets, from categories,topics,movielens")
    ap.add_argument("--workers", type=int, default=2, help="training processes at once (default 2: this box's cores)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    plan = SMOKE if a.smoke else FULL
    over = {}
    if a.users:
        over["users"] = a.users
    if a.seeds:
        over["seeds"] = tuple(int(s) for s in a.seeds.split(","))
    if a.models:
        over["models"] = tuple(m.strip() for m in a.models.split(",") if m.strip())
    if a.sets:
        sets = [x.strip() for x in a.sets.split(",") if x.strip()]
        bad = set(sets) - {*GENERATORS, "movielens"}
        if bad:
            ap.error(f"--sets: unknown {sorted(bad)}")
        over |= {"families": tuple(x for x in sets if x in GENERATORS), "movielens": "movielens" in sets}
    plan = dataclasses.replace(plan, **over)
    out = Path(a.out or ("reports/reproduce-smoke" if a.smoke else "reports/reproduce"))
    if a.workers < 1 or a.threads < 1:
        ap.error("--workers and --threads must be >= 1")
    return run(plan, Path(a.data_root), out, a.workers, a.threads)


if __name__ == "__main__":
    sys.exit(main())
