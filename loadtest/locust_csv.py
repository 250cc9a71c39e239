"""Readers for the CSV files locust writes with `--csv PREFIX` (client-side view of a run).

PREFIX_stats.csv          one row per endpoint + "Aggregated": counts, mean, percentiles (ms)
PREFIX_stats_history.csv  one row per second (per endpoint with --csv-full-history; those rows
                          carry percentiles over locust's sliding ~10 s window)
PREFIX_failures.csv       one row per distinct failure message
PREFIX_exceptions.csv     one row per distinct exception raised by the locustfile's own code

locust refreshes _stats.csv, _failures.csv and _exceptions.csv once a second and not at exit, so they miss the last
second of a run; our locustfile writes PREFIX_final_stats.csv / PREFIX_final_failures.csv (same
layout) when locust quits, and the readers prefer those.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

AGGREGATED = "Aggregated"


def _num(v: str) -> float | None:
    """locust writes 'N/A' (or '') for a percentile of an endpoint with no requests yet."""
    v = (v or "").strip()
    return None if v in ("", "N/A") else float(v)


def _final_or_periodic(prefix: str | Path, kind: str) -> Path:
    final = Path(f"{prefix}_final_{kind}.csv")
    return final if final.is_file() else Path(f"{prefix}_{kind}.csv")


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"locust CSV {path} not found (did locust run with --csv {path.parent}/...?)")
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@dataclass(frozen=True)
class EndpointStats:
    method: str
    name: str
    requests: int
    failures: int
    mean_ms: float
    min_ms: float
    max_ms: float
    rps: float
    percentiles_ms: dict[str, float | None]  # "50%", "95%", "99%", ... as locust labels them

    def pct(self, label: str) -> float | None:
        if label not in self.percentiles_ms:
            raise ValueError(f"percentile {label!r} not in the locust CSV (has {sorted(self.percentiles_ms)})")
        return self.percentiles_ms[label]


@dataclass(frozen=True)
class HistoryPoint:
    ts: int  # unix seconds
    users: int
    name: str
    rps: float
    fail_rps: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    total_requests: int
    total_failures: int


def _pct_columns(header: list[str]) -> list[str]:
    return [c for c in header if c.endswith("%") and not c.startswith("Total")]


def read_stats(prefix: str | Path) -> dict[str, EndpointStats]:
    """Endpoint name -> stats; the total row is under AGGREGATED."""
    rows = _rows(_final_or_periodic(prefix, "stats"))
    out: dict[str, EndpointStats] = {}
    for r in rows:
        pcts = _pct_columns(list(r))
        out[r["Name"]] = EndpointStats(
            method=r["Type"],
            name=r["Name"],
            requests=int(r["Request Count"]),
            failures=int(r["Failure Count"]),
            mean_ms=float(r["Average Response Time"]),
            min_ms=float(r["Min Response Time"]),
            max_ms=float(r["Max Response Time"]),
            rps=float(r["Requests/s"]),
            percentiles_ms={c: _num(r[c]) for c in pcts},
        )
    if AGGREGATED not in out:
        raise ValueError(f"{prefix}_stats.csv has no {AGGREGATED!r} row; is it a locust stats file?")
    return out


def read_history(prefix: str | Path, name: str = AGGREGATED) -> list[HistoryPoint]:
    """Per-second points of one endpoint (or the aggregate), oldest first."""
    points = []
    for r in _rows(Path(f"{prefix}_stats_history.csv")):
        if r["Name"] != name:
            continue
        # before the first answer locust writes 0 (not N/A) into the windowed percentile columns
        pct = (lambda c: None) if int(r["Total Request Count"]) == 0 else (lambda c: _num(r[c]))
        points.append(HistoryPoint(
            ts=int(r["Timestamp"]),
            users=int(r["User Count"]),
            name=r["Name"],
            rps=float(r["Requests/s"]),
            fail_rps=float(r["Failures/s"]),
            p50_ms=pct("50%"),
            p95_ms=pct("95%"),
            p99_ms=pct("99%"),
            total_requests=int(r["Total Request Count"]),
            total_failures=int(r["Total Failure Count"]),
        ))
    return sorted(points, key=lambda p: p.ts)


def read_failures(prefix: str | Path) -> list[dict[str, str]]:
    """Distinct failures (Method, Name, Error, Occurrences); empty when the file is missing."""
    path = _final_or_periodic(prefix, "failures")
    return _rows(path) if path.is_file() else []


def read_exceptions(prefix: str | Path) -> list[dict[str, str]]:
    """Exceptions of the locustfile's code (Count, Message, Traceback, Nodes); empty when missing."""
    path = _final_or_periodic(prefix, "exceptions")
    return _rows(path) if path.is_file() else []
