"""Operate a model store from the shell.

    python -m model_store.cli --root DIR list
    python -m model_store.cli --root DIR show 20261129-0001
    python -m model_store.cli --root DIR verify 20261129-0001
    python -m model_store.cli --root DIR activate 20261129-0001
    python -m model_store.cli --root DIR rollback
    python -m model_store.cli --root DIR gc --keep 5 [--dry-run]
    python -m model_store.cli --root DIR delete 20261129-0001

Exit status: 0 ok, 1 refused / broken artifact (one line per problem on stderr; `list` still prints
the valid versions), 2 bad usage.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from model_store.errors import ArtifactError, RegistryError
from model_store.manifest import Manifest
from model_store.registry import ModelRegistry

_METRIC_COLUMNS = ("auc", "gauc", "logloss")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _metric(m: Manifest, name: str) -> str:
    v = m.metrics.get(name, m.metrics.get(f"test_{name}"))
    return f"{v:.4f}" if isinstance(v, int | float) and not isinstance(v, bool) else "-"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def cmd_list(reg: ModelRegistry, args: argparse.Namespace) -> int:
    manifests, broken = reg.scan()
    active = reg.active()
    rows = [["", "VERSION", "CREATED (UTC)", "SIZE", "PARAMS", *(c.upper() for c in _METRIC_COLUMNS), "PARENT", "NOTES"]]
    for m in manifests:
        rows.append([
            "*" if m.version == active else "", m.version, m.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            _size(m.weights_bytes), f"{m.n_params:,}", *(_metric(m, c) for c in _METRIC_COLUMNS),
            m.parent or "-", m.notes[:40],
        ])
    print(_table(rows))
    print(f"{len(manifests)} version(s); active: {active or 'none'}")
    for name, reason in broken:
        print(f"BROKEN {name}: {reason}", file=sys.stderr)
    return 1 if broken else 0


def cmd_show(reg: ModelRegistry, args: argparse.Namespace) -> int:
    manifest = reg.get(args.version)
    doc = manifest.model_dump(mode="json")
    doc["active"] = reg.active() == manifest.version
    print(json.dumps(doc, indent=2, sort_keys=True))
    return 0


def cmd_verify(reg: ModelRegistry, args: argparse.Namespace) -> int:
    m = reg.verify(args.version)
    print(f"OK {m.version}: sha256 {m.weights_sha256}, {m.n_tensors} tensors, {m.n_params:,} params match the config")
    return 0


def cmd_activate(reg: ModelRegistry, args: argparse.Namespace) -> int:
    before = reg.active()
    m = reg.activate(args.version)
    print(f"active: {m.version} (was {before or 'none'})")
    return 0


def cmd_rollback(reg: ModelRegistry, args: argparse.Namespace) -> int:
    before = reg.active()
    print(f"active: {reg.rollback()} (was {before})")
    return 0


def cmd_gc(reg: ModelRegistry, args: argparse.Namespace) -> int:
    deleted = reg.gc(keep=args.keep, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {len(deleted)} version(s)" + (": " + ", ".join(deleted) if deleted else ""))
    return 0


def cmd_delete(reg: ModelRegistry, args: argparse.Namespace) -> int:
    reg.delete(args.version)
    print(f"deleted {args.version}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model_store.cli", description="Manage versioned TWIN model artifacts.")
    p.add_argument("--root", default=os.environ.get("MODEL_STORE_ROOT"),
                   help="model store directory (default: $MODEL_STORE_ROOT)")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="versions, newest last; * marks the active one").set_defaults(fn=cmd_list)
    for name, fn, text in (("show", cmd_show, "print a version's manifest"),
                           ("verify", cmd_verify, "checksum + rebuild the model and check every tensor"),
                           ("activate", cmd_activate, "verify, then make a version active"),
                           ("delete", cmd_delete, "delete a version (not the active one)")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("version")
        sp.set_defaults(fn=fn)
    sub.add_parser("rollback", help="re-activate the previously active version").set_defaults(fn=cmd_rollback)
    gc = sub.add_parser("gc", help="delete old versions, keeping the newest N, the active one and the rollback target")
    gc.add_argument("--keep", type=int, required=True)
    gc.add_argument("--dry-run", action="store_true")
    gc.set_defaults(fn=cmd_gc)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.root:
        parser.error("--root is required (or set MODEL_STORE_ROOT)")
    if not os.path.isdir(args.root):
        print(f"error: model store root {args.root!r} is not a directory", file=sys.stderr)
        return 1
    try:
        return args.fn(ModelRegistry(args.root), args)
    except (ArtifactError, RegistryError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `... | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
