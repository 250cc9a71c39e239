"""Prometheus text scraping, snapshot deltas and histogram quantiles (server-side view of a run).

A run is bracketed by two scrapes of every replica; the difference of the cumulative counters is
what the run did. Quantiles follow PromQL's `histogram_quantile`: find the bucket holding the rank,
interpolate linearly inside it; ranks in the +Inf bucket report the largest finite bound.
"""
from __future__ import annotations

import logging
import math
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs, hashable


@dataclass
class Snapshot:
    """Every sample of one scrape (or a sum/difference of scrapes), keyed by (sample name, labels).

    `_created` samples are dropped: they are timestamps, not counts, and would not survive a delta.
    """

    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)

    def total(self, name: str, **match: str) -> float:
        """Sum of `name` over every label set that carries the `match` labels."""
        return sum(v for (n, labels), v in self.samples.items()
                   if n == name and all(dict(labels).get(k) == m for k, m in match.items()))

    def label_values(self, name: str, label: str) -> list[str]:
        return sorted({dict(lb)[label] for (n, lb) in self.samples if n == name and label in dict(lb)})

    def buckets(self, hist: str, **match: str) -> dict[float, float]:
        """Cumulative bucket counts {le: count} of histogram `hist`, summed over non-matched labels."""
        out: dict[float, float] = defaultdict(float)
        for (n, labels), v in self.samples.items():
            if n != hist + "_bucket":
                continue
            d = dict(labels)
            if all(d.get(k) == m for k, m in match.items()):
                out[float(d["le"])] += v
        return dict(out)


def parse_metrics(text: str) -> Snapshot:
    snap = Snapshot()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            key = (s.name, tuple(sorted(s.labels.items())))
            snap.samples[key] = snap.samples.get(key, 0.0) + float(s.value)
    return snap


def scrape(url: str, timeout_s: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (caller checks the host)
        return resp.read().decode("utf-8")


def merge(snaps: list[Snapshot]) -> Snapshot:
    """Sum of several replicas' scrapes: what the whole fleet did."""
    out = Snapshot()
    for snap in snaps:
        for k, v in snap.samples.items():
            out.samples[k] = out.samples.get(k, 0.0) + v
    return out


def delta(before: Snapshot, after: Snapshot) -> Snapshot:
    """after - before per sample. A sample that went down means the process restarted during the
    run (counters reset to 0), so its whole `after` value is the run's share, as PromQL's rate() does."""
    out = Snapshot()
    for k, v in after.samples.items():
        prev = before.samples.get(k, 0.0)
        out.samples[k] = v - prev if v >= prev else v
    return out


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """PromQL histogram_quantile over cumulative {le: count}; None when the histogram is empty."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    if not buckets or math.inf not in buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[math.inf]
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank and count > prev_count:
            if math.isinf(le):
                return prev_le  # no upper bound to interpolate to: report the largest finite bound
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


def histogram_mean(snap: Snapshot, hist: str, **match: str) -> float | None:
    count = snap.total(hist + "_count", **match)
    return snap.total(hist + "_sum", **match) / count if count > 0 else None
