"""PNG plots of a load-test run: latency percentiles over time (with the budget) and throughput."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or in CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from loadtest.locust_csv import HistoryPoint  # noqa: E402


def _elapsed(points: list[HistoryPoint]) -> list[int]:
    t0 = points[0].ts
    return [p.ts - t0 for p in points]


def plot_latency(points: list[HistoryPoint], budget_ms: float, path: Path, title: str) -> Path:
    """p50/p95/p99 (locust's sliding window) per second, and the p99 budget as a horizontal line.

    Log y-axis when the percentiles run far above the budget (else the budget line sits flat on the
    floor); locust's percentiles include failed requests, so the share of failures goes in the title."""
    if not points:
        raise ValueError(f"no history points to plot for {path}")
    t = _elapsed(points)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    peak = 0.0
    for attr, label in (("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99")):
        ys = [float("nan") if getattr(p, attr) is None else float(getattr(p, attr)) for p in points]
        peak = max([peak, *(y for y in ys if y == y)])
        ax.plot(t, ys, label=label, linewidth=1.5)
    ax.axhline(budget_ms, color="red", linestyle="--", linewidth=1.2, label=f"p99 budget {budget_ms:g} ms")
    ax.set_xlabel("elapsed time (s)")
    last = points[-1]
    if last.total_failures:
        title += f"\n(percentiles include {last.total_failures:,} failed of {last.total_requests:,} requests)"
    ax.set_title(title)
    if peak > 10 * budget_ms:
        ax.set_yscale("log")
        ax.set_ylabel("latency (ms, log scale)")
        # 20, 300, 1000 rather than 2x10^1; minor ticks labelled at 2, 3, 5 x 10^n only (no crowding)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _pos: f"{v:g}" if f"{v:g}"[0] in "235" else ""))
        ax.set_ylim(bottom=budget_ms / 2)
    else:
        ax.set_ylabel("latency (ms)")
        ax.set_ylim(bottom=0)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # outside: never hides a line
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def completed_rates(points: list[HistoryPoint]) -> tuple[list[int], list[float], list[float]]:
    """Requests/s and failures/s from the growth of the cumulative counts between rows (exact),
    rather than locust's lagging `current_rps` column."""
    t0 = points[0].ts
    ts, rps, fps = [], [], []
    for prev, cur in zip(points, points[1:]):
        dt = cur.ts - prev.ts
        if dt <= 0:
            continue
        ts.append(cur.ts - t0)
        rps.append((cur.total_requests - prev.total_requests) / dt)
        fps.append((cur.total_failures - prev.total_failures) / dt)
    return ts, rps, fps


def plot_throughput(points: list[HistoryPoint], path: Path, title: str) -> Path:
    """Completed requests/s and failures/s per second; simulated users on the right axis."""
    if len(points) < 2:
        raise ValueError(f"need at least two history points to plot throughput into {path}")
    t = _elapsed(points)
    rt, rps, fps = completed_rates(points)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(rt, rps, label="answered requests/s", linewidth=1.5)
    ax.plot(rt, fps, label="failures/s", color="red", linewidth=1.2)
    ax.set_xlabel("elapsed time (s)")
    ax.set_ylabel("throughput (requests/s)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    users_ax = ax.twinx()
    users_ax.plot(t, [p.users for p in points], label="users", color="gray", linestyle=":", linewidth=1.2)
    users_ax.set_ylabel("simulated users")
    users_ax.set_ylim(bottom=0, top=max(p.users for p in points) * 1.15 + 1)
    lines = ax.get_lines() + users_ax.get_lines()
    # below the axes: inside, it covers the lines of a steady run (they sit in the upper half)
    ax.legend(lines, [ln.get_label() for ln in lines], loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3,
              frameon=False)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
