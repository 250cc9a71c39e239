"""Command line of the training package.

    python -m training.cli generate --preset ci --out data/ci
    python -m training.cli generate --family topics --preset lifelong --out data/topics_lifelong
    python -m training.cli train --data data/ci --out-registry artifacts/registry --report reports/train_ci.md
    python -m training.cli world --data data/ci --seq-len 10000 --users 200 --first-user 1000001 --out data/ci/world-W1.parquet
    python -m training.cli train-movielens --data data/movielens --out-registry artifacts/registry \\
        --report reports/train_movielens.md

`train` trains TWIN and the baselines (--variants) on the same data, prints a markdown table of the
test metrics and publishes the TWIN model to the model store.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import torch

from model_store.manifest import TRAINING_ONLY_KEY
from training import baselines, movielens, report, synthetic, synthetic_topics
from training.dataset import load_dataset
from training.trainer import VARIANTS, TrainSettings, run_comparison, settings_dict

log = logging.getLogger(__name__)

FAMILIES = {"categories": synthetic, "topics": synthetic_topics}  # generator modules by family


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out-registry", help="model store root to publish the TWIN model to (omit: no publish)")
    p.add_argument("--activate", action="store_true", help="also make the published version active")
    p.add_argument("--report", help="write the markdown report (+ settings) to this file, curves beside it")
    p.add_argument("--variants", default="twin,recent",
                   help=f"comma-separated, first one is published; from {','.join(VARIANTS)}")
    p.add_argument("--no-references", action="store_true", help="skip the plain reference models")
    p.add_argument("--epochs", type=int, default=20, help="a cap: early stopping ends runs before it")
    p.add_argument("--batch-size", type=int, default=256, help="targets per batch")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW's decoupled weight decay")
    p.add_argument("--id-l2", type=float, default=TrainSettings.id_l2,
                   help="lambda of DIN's mini-batch aware L2 on the id embedding tables (0: off)")
    p.add_argument("--max-len", type=int, default=10_000, help="behaviors the TWIN GSU reads per request")
    p.add_argument("--max-targets", type=int, default=64, help="targets per request (larger ones are cut)")
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--evals-per-epoch", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (one per core)")
    p.add_argument("--arch", default="{}", help='JSON of TwinConfig overrides, e.g. \'{"d_k": 16}\'')
    p.add_argument("--no-progress", action="store_true")


def _settings(a: argparse.Namespace) -> TrainSettings:
    arch = json.loads(a.arch)
    if not isinstance(arch, dict):
        raise ValueError(f"--arch must be a JSON object, got {a.arch!r}")
    return TrainSettings(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, warmup_steps=a.warmup_steps,
                         weight_decay=a.weight_decay, id_l2=a.id_l2,
                         max_len=a.max_len, max_targets=a.max_targets, seed=a.seed, patience=a.patience,
                         evals_per_epoch=a.evals_per_epoch, progress=not a.no_progress, arch=arch)


def manifest_metrics(results, refs) -> dict[str, float]:
    """The published model's test metrics, its siblings' AUC/GAUC and the references', for the manifest."""
    best = results[0]
    metrics = {f"test_{k}": float(v) for k, v in best.test.items()}
    metrics["best_val_auc"] = best.best_val_auc
    for r in results[1:]:
        metrics[f"{r.variant}_test_auc"] = float(r.test["auc"])
        metrics[f"{r.variant}_test_gauc"] = float(r.test["gauc"])
    for ref in refs:
        metrics[f"ref {ref.name} auc"] = float(ref.test["auc"])
        metrics[f"ref {ref.name} gauc"] = float(ref.test["gauc"])
    return metrics


def _train(data_dir: str, a: argparse.Namespace, title: str) -> int:
    torch.set_num_threads(a.threads)
    variants = tuple(v.strip() for v in a.variants.split(",") if v.strip())
    bad = [v for v in variants if v not in VARIANTS]
    if not variants or bad:
        raise SystemExit(f"--variants: unknown {bad or variants}; choose from {tuple(VARIANTS)}")
    if a.out_registry and TRAINING_ONLY_KEY in VARIANTS[variants[0]][0].get("extra", {}):
        raise SystemExit(f"--out-registry publishes the first variant, and {variants[0]!r} is a training-only "
                         "long-sequence baseline that serving cannot run: put a TWIN variant first")
    settings = _settings(a)
    t0 = time.perf_counter()
    data = load_dataset(data_dir)
    refs = [] if a.no_references else baselines.references(data, seed=a.seed)
    results = run_comparison(data, variants, settings)
    wall = time.perf_counter() - t0
    text = report.markdown(title, results, refs)
    print(text)
    print(f"wall time {wall:.0f} s (load + references + train + evaluate, {torch.get_num_threads()} threads)")
    if a.report:
        out = Path(a.report)
        out.parent.mkdir(parents=True, exist_ok=True)
        curves = out.with_suffix(".curves.png")
        report.plot_curves(results, curves, title)
        out.write_text(f"{text}\n![validation curves]({curves.name})\n\nwall time: {wall:.0f} s; data: `{data_dir}` "
                       f"(sha256 {data.fingerprint[:16]}...)\n\nsettings: `{json.dumps(settings_dict(settings))}`\n")
    if a.out_registry:
        from model_store.registry import ModelRegistry

        best = results[0]
        reg = ModelRegistry(a.out_registry)
        version = reg.publish(best.model, metrics=manifest_metrics(results, refs), data_fingerprint=data.fingerprint,
                              notes=f"{title}: variant {best.variant}")
        print(f"published {best.variant} as version {version} in {a.out_registry}")
        if a.activate:
            reg.activate(version)
            print(f"activated {version}")
    return 0


def _holds(out: Path, family: str, cfg) -> bool:
    """Does `out` hold a complete data set of this family and generator config?"""
    try:
        meta = json.loads((out / "schema.json").read_text())["meta"]
    except (OSError, ValueError, KeyError):
        return False
    want = json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples as lists, as schema.json stores them
    return meta.get("family") == family and meta.get("config") == want and (out / "samples.parquet").exists()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.cli", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("generate", help="write a synthetic lifelong data set")
    g.add_argument("--family", default="categories", choices=sorted(FAMILIES),
                   help="categories: interests are categories (training/synthetic.py); topics: finer latent "
                        "interests (training/synthetic_topics.py)")
    g.add_argument("--preset", default="ci", choices=sorted({p for f in FAMILIES.values() for p in f.PRESETS}))
    g.add_argument("--out", required=True)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--users", type=int, help="override the preset's user count")
    g.add_argument("--if-changed", action="store_true",
                   help="do nothing when --out already holds the data of exactly this family and config")

    w = sub.add_parser("world", help="write a load-test world: users of exactly --seq-len behaviors, drawn by a "
                                     "synthetic data set's generator on its catalog (behaviors file format)")
    w.add_argument("--data", required=True, help="the synthetic data set (its schema.json names family, config, seed)")
    w.add_argument("--seq-len", type=int, required=True)
    w.add_argument("--users", type=int, required=True)
    w.add_argument("--first-user", type=int, required=True)
    w.add_argument("--out", required=True)

    t = sub.add_parser("train", help="train TWIN and baselines on a data directory")
    t.add_argument("--data", required=True)
    _add_train_args(t)

    m = sub.add_parser("train-movielens", help="convert MovieLens, then train as `train`")
    m.add_argument("--ml-dir", default=str(movielens.DEFAULT_DIR))
    m.add_argument("--data", default="data/movielens", help="where the converted data set is written")
    m.add_argument("--target-frac", type=float, default=0.2)
    _add_train_args(m)

    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if a.cmd == "generate":
        over = {"seed": a.seed} | ({"n_users": a.users} if a.users else {})
        gen = FAMILIES[a.family]
        if a.preset not in gen.PRESETS:
            g.error(f"family {a.family} has no preset {a.preset!r}; choose one of {sorted(gen.PRESETS)}")
        cfg = gen.preset(a.preset, **over)
        if a.if_changed and _holds(Path(a.out), a.family, cfg):
            print(f"{a.out} already holds {a.family} {a.preset}: not generated again")
            return 0
        meta = gen.generate(cfg, a.out)
        print(f"wrote {a.out}: {meta['n_behaviors']} behaviors, {meta['n_samples']} samples, "
              f"{meta['positive_rate']:.3f} positive")
        return 0
    if a.cmd == "world":
        from training.worlds import write_world

        n = write_world(a.data, a.out, a.seq_len, a.users, a.first_user)
        print(f"wrote {a.out}: {a.users:,} users x {a.seq_len:,} behaviors ({n:,})")
        return 0
    if a.cmd == "train":
        return _train(a.data, a, title=f"train on {a.data}")
    meta = movielens.convert(a.ml_dir, a.data, target_frac=a.target_frac)
    print(f"wrote {a.data}: {meta['n_behaviors']} ratings, samples {meta['samples_per_split']}")
    return _train(a.data, a, title="MovieLens ml-latest-small")


if __name__ == "__main__":
    sys.exit(main())
