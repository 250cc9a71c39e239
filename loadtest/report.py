"""Load-test report: client-side latency from locust's CSVs, server-side stage breakdown from
/metrics deltas, plots, and the pass/fail gate.

    python -m loadtest.report --csv-prefix reports/loadtest/locust --budget-ms 30 \
        --metrics-before reports/loadtest/metrics_before_0.prom --metrics-after reports/loadtest/metrics_after_0.prom \
        --out reports/loadtest

Gate (exit code 1 when it fails): any failed request, an exception in the locustfile's code, no
successful score request, the client-side p99 of POST /v1/score above the budget, or, when the run
measured a baseline just before the load (loadtest.baseline), a ratio above its bound: HTTP p99 over
the bare forward's p99, or the bare forward over the hardware floor. The gate uses the client's view because that is what a
caller lives with; the server stages explain where the time went.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadtest.baseline import Baseline, ratios
from loadtest.locust_csv import AGGREGATED, EndpointStats, read_exceptions, read_failures, read_history, read_stats
from loadtest.plots import plot_latency, plot_throughput
from loadtest.prom import Snapshot, delta, histogram_mean, histogram_quantile, merge, parse_metrics
from loadtest.traffic import SCORE_NAME

log = logging.getLogger(__name__)

LATENCY_HIST = "twin_request_latency_seconds"
BATCH_HIST = "twin_batch_size"  # label unit in {requests, candidates} when the service splits it
REQUESTS_COUNTER = "twin_requests_total"  # labels endpoint, code
STAGES = ("queue", "fetch", "gsu", "esu", "total")
COUNTERS = {"cache_hits": "twin_cache_hits_total", "cache_misses": "twin_cache_misses_total",
            "degraded": "twin_degraded_total", "shed": "twin_shed_total"}


@dataclass(frozen=True)
class StageStats:
    stage: str
    count: int
    mean_ms: float | None
    p50_ms: float | None
    p99_ms: float | None


@dataclass
class ServerStats:
    replicas: int
    stages: list[StageStats]
    batch: dict[str, tuple[float | None, float | None]]  # unit -> (mean, p99) per model call
    counters: dict[str, float]
    responses: dict[str, float]  # "endpoint code" -> count, as the server saw them

    @property
    def cache_hit_rate(self) -> float | None:
        looked_up = self.counters["cache_hits"] + self.counters["cache_misses"]
        return self.counters["cache_hits"] / looked_up if looked_up > 0 else None


@dataclass
class GateResult:
    passed: bool
    reasons: list[str] = field(default_factory=list)


def _ms(v: float | None) -> float | None:
    return None if v is None else v * 1000.0


def server_stats(before: list[Snapshot], after: list[Snapshot]) -> ServerStats:
    """Per-replica deltas (so a replica restart is handled per replica), then summed over the fleet."""
    if len(before) != len(after):
        raise ValueError(f"need one before and one after scrape per replica, got {len(before)} and {len(after)}")
    d = merge([delta(b, a) for b, a in zip(before, after)])
    stages = []
    for stage in STAGES:
        buckets = d.buckets(LATENCY_HIST, stage=stage)
        stages.append(StageStats(
            stage=stage,
            count=int(d.total(LATENCY_HIST + "_count", stage=stage)),
            mean_ms=_ms(histogram_mean(d, LATENCY_HIST, stage=stage)),
            p50_ms=_ms(histogram_quantile(0.50, buckets)),
            p99_ms=_ms(histogram_quantile(0.99, buckets)),
        ))
    units = d.label_values(BATCH_HIST + "_count", "unit")
    batch = {u: (histogram_mean(d, BATCH_HIST, unit=u), histogram_quantile(0.99, d.buckets(BATCH_HIST, unit=u)))
             for u in units}
    if not units:
        batch["requests"] = (histogram_mean(d, BATCH_HIST), histogram_quantile(0.99, d.buckets(BATCH_HIST)))
    responses = {}
    for (name, labels), v in sorted(d.samples.items()):
        if name == REQUESTS_COUNTER and v > 0:
            lb = dict(labels)
            key = f"{lb.get('endpoint', '?')} {lb.get('code', '?')}"
            responses[key] = responses.get(key, 0.0) + v
    return ServerStats(
        replicas=len(after),
        stages=stages,
        batch=batch,
        counters={k: d.total(name) for k, name in COUNTERS.items()},
        responses=responses,
    )


def gate(stats: dict[str, EndpointStats], budget_ms: float, endpoint: str = SCORE_NAME,
         user_exceptions: int = 0, baseline: Baseline | None = None, bounds: dict[str, float] | None = None
         ) -> GateResult:
    """bounds: ratio name (loadtest.baseline.ratios) -> the largest value that passes."""
    if budget_ms <= 0:
        raise ValueError(f"budget_ms must be > 0, got {budget_ms}")
    reasons = []
    total = stats[AGGREGATED]
    if total.failures > 0:
        reasons.append(f"{total.failures} of {total.requests} requests failed")
    if user_exceptions > 0:  # the load generator itself broke: its figures are not the service's
        reasons.append(f"the locustfile raised {user_exceptions} exception(s) (see the locust log)")
    ep = stats.get(endpoint)
    if ep is None or ep.requests - ep.failures <= 0:
        reasons.append(f"no successful {endpoint} request")
    else:
        p99 = ep.pct("99%")
        if p99 is None or p99 > budget_ms:
            reasons.append(f"{endpoint} p99 {p99} ms > budget {budget_ms:g} ms")
        if baseline is not None:
            got = ratios(baseline, p99)
            for name, bound in (bounds or {}).items():
                if name not in got:
                    reasons.append(f"ratio {name} could not be measured")
                elif got[name] > bound:
                    reasons.append(f"{name} = {got[name]:.2f} > bound {bound:g} (baseline {baseline.to_dict()})")
    return GateResult(passed=not reasons, reasons=reasons)


def _f(v: float | None, fmt: str = "{:.1f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def render_markdown(meta: dict[str, Any], stats: dict[str, EndpointStats], server: ServerStats | None,
                    result: GateResult, failures: list[dict[str, str]], plots: list[Path], budget_ms: float) -> str:
    lines = [f"# Load test: {meta.get('workload', '?')}", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += ["", f"## Gate: {'PASS' if result.passed else 'FAIL'}", "",
              f"p99 of {SCORE_NAME} <= {budget_ms:g} ms and no failed request"
              + ("".join(f"; {k} <= {v:g}" for k, v in meta.get("baseline", {}).get("bounds", {}).items())) + "."]
    lines += [f"- {r}" for r in result.reasons]
    lines += ["", "## Client side (locust)", "",
              "| endpoint | requests | failures | req/s | mean ms | p50 ms | p95 ms | p99 ms | max ms |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in sorted(stats.items(), key=lambda kv: kv[0] == AGGREGATED):
        lines.append(f"| {name} | {s.requests} | {s.failures} | {s.rps:.1f} | {s.mean_ms:.1f} | "
                     f"{_f(s.pct('50%'), '{:.0f}')} | {_f(s.pct('95%'), '{:.0f}')} | "
                     f"{_f(s.pct('99%'), '{:.0f}')} | {s.max_ms:.0f} |")
    lines += ["", "## Server side (/metrics delta over the run)", ""]
    if server is None:
        lines.append("No /metrics scrapes were given.")
    else:
        lines += [f"Summed over {server.replicas} replica(s). Quantiles are interpolated inside histogram "
                  "buckets (PromQL `histogram_quantile`), so they are as fine as the bucket bounds.", "",
                  "| stage | count | mean ms | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|"]
        for st in server.stages:
            lines.append(f"| {st.stage} | {st.count} | {_f(st.mean_ms, '{:.2f}')} | "
                         f"{_f(st.p50_ms, '{:.2f}')} | {_f(st.p99_ms, '{:.2f}')} |")
        c = server.counters
        rate = server.cache_hit_rate
        lines += ["", f"- projection cache: {c['cache_hits']:.0f} hits, {c['cache_misses']:.0f} misses, "
                      f"hit rate {_f(None if rate is None else 100 * rate, '{:.1f}%')}",
                  f"- degraded answers: {c['degraded']:.0f}; shed requests: {c['shed']:.0f}"]
        lines += [f"- {unit} per model call: mean {_f(mean, '{:.2f}')}, p99 {_f(p99, '{:.1f}')}"
                  for unit, (mean, p99) in server.batch.items()]
        if server.responses:
            lines.append("- responses seen by the server: "
                         + ", ".join(f"{k}: {v:.0f}" for k, v in server.responses.items()))
    if failures:
        lines += ["", "## Failures", "", "| method | name | error | occurrences |", "|---|---|---|---:|"]
        for f in sorted(failures, key=lambda f: -int(f["Occurrences"]))[:10]:
            err = f["Error"].replace("|", "\\|").replace("\n", " ")[:200]
            lines.append(f"| {f['Method']} | {f['Name']} | {err} | {f['Occurrences']} |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def build_report(csv_prefix: str | Path, out_dir: str | Path, budget_ms: float,
                 metrics_before: list[str] | None = None, metrics_after: list[str] | None = None,
                 meta: dict[str, Any] | None = None, baseline: Baseline | None = None,
                 bounds: dict[str, float] | None = None) -> GateResult:
    """Reads the run's files, writes report.md, summary.json and the plots into out_dir; returns the gate."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    stats = read_stats(csv_prefix)
    exceptions = read_exceptions(csv_prefix)
    result = gate(stats, budget_ms, user_exceptions=sum(int(e["Count"]) for e in exceptions),
                  baseline=baseline, bounds=bounds)
    if baseline is not None:
        ep = stats.get(SCORE_NAME)
        meta["baseline"] = {**baseline.to_dict(), "ratios": ratios(baseline, ep.pct("99%") if ep else None),
                            "bounds": bounds or {}}
    server = None
    if metrics_before or metrics_after:
        server = server_stats([parse_metrics(t) for t in metrics_before or []],
                              [parse_metrics(t) for t in metrics_after or []])
    # per-endpoint history exists with --csv-full-history; fall back to the aggregate otherwise
    history = read_history(csv_prefix, SCORE_NAME) or read_history(csv_prefix, AGGREGATED)
    plots = []
    if len(history) >= 2:
        what = f"{meta.get('workload', '')} {SCORE_NAME}".strip()
        plots.append(plot_latency(history, budget_ms, out / "latency.png", f"{what}: latency percentiles"))
        plots.append(plot_throughput(read_history(csv_prefix, AGGREGATED) or history, out / "throughput.png",
                                     f"{meta.get('workload', '')} throughput (all endpoints)".strip()))
    failures = read_failures(csv_prefix)
    (out / "report.md").write_text(render_markdown(meta, stats, server, result, failures, plots, budget_ms))
    summary = {
        "meta": meta, "budget_ms": budget_ms, "gate": asdict(result), "ratio_bounds": bounds or {},
        "client": {name: asdict(s) for name, s in stats.items()},
        "server": None if server is None else {**asdict(server), "cache_hit_rate": server.cache_hit_rate},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log.info("report written to %s (gate %s)", out / "report.md", "PASS" if result.passed else "FAIL")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--csv-prefix", required=True, help="the prefix given to locust --csv")
    ap.add_argument("--budget-ms", type=float, required=True, help="p99 budget of POST /v1/score (ms)")
    ap.add_argument("--out", required=True, help="directory for report.md, summary.json and PNGs")
    ap.add_argument("--metrics-before", nargs="*", default=[], help="/metrics text files, one per replica")
    ap.add_argument("--metrics-after", nargs="*", default=[], help="same replicas, same order, after the run")
    ap.add_argument("--workload", default="", help="workload name for titles (W1, W2, W3)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = build_report(
        args.csv_prefix, args.out, args.budget_ms,
        [Path(p).read_text() for p in args.metrics_before], [Path(p).read_text() for p in args.metrics_after],
        meta={"workload": args.workload} if args.workload else {},
    )
    print(Path(args.out, "report.md").read_text())
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
