"""Runs one micro-batch on the inference thread: pad to shape buckets, GSU, ESU, split per request.

Everything here executes on the thread that owns the device (see worker.py), under
torch.inference_mode and, on CUDA with half precision, float16 autocast.
"""
from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import Executor

import numpy as np
import torch

from service.engine.buckets import bucket_for
from service.engine.request import ScoreInputs, ScoreResult
from service.engine.slot import ModelSlot
from twin.kernels import cpu_threads
from twin.model import ServeBatch, ServeOutput


def _to_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(a)
    if device.type == "cuda":  # pinned staging buffer -> asynchronous copy overlapping the previous kernels
        return t.pin_memory().to(device, non_blocking=True)
    return t


def collate(slot: ModelSlot, items: list[ScoreInputs]) -> ServeBatch:
    """Pad B requests to (L bucket, C bucket). Padding is masked out, so it never changes a score.

    On the CPU the batch is padded only to its own largest request (floored at the smallest bucket):
    buckets exist so that an accelerator's cached kernels and graphs see few shapes, and eager CPU
    kernels cache nothing, so padding there would be pure waste (W1's 100 candidates in a 104 bucket
    cost 4% more GEMM and top-k rows). A size beyond the largest bucket is refused on both."""
    B = len(items)
    n_seq, n_cand = max(it.n_seq for it in items), max(it.n_cand for it in items)
    Lb, Cb = bucket_for(n_seq, slot.seq_buckets), bucket_for(n_cand, slot.cand_buckets)
    if slot.device.type == "cpu":
        Lb, Cb = max(n_seq, slot.seq_buckets[0]), max(n_cand, slot.cand_buckets[0])
    S = min(slot.short_len, Lb)
    F_h, J_s, D = len(slot.inherent_names), len(slot.cross_names), slot.model.proj_dim
    # Projections stay in the cache's float16: the model converts only the key half (for the alpha
    # GEMM) and the value half at the k selected positions, not all [B, Lb, D].
    first = items[0].seq_proj
    padded = not (B == 1 and first.shape[0] == Lb)
    # [B, Lb, D]; with nothing to pad, the gathered tensor itself (no copy)
    seq_proj = torch.empty(B, Lb, D, dtype=first.dtype, device=slot.device) if padded else first[None]
    seq_cross = np.zeros((B, Lb, J_s), np.float32)
    seq_ts = np.zeros((B, Lb), np.int64)
    seq_mask = np.zeros((B, Lb), np.bool_)
    recent = np.zeros((B, S, F_h), np.int64)
    cand = np.zeros((B, Cb, F_h), np.int64)
    cand_mask = np.zeros((B, Cb), np.bool_)
    now = np.zeros(B, np.int64)
    hist_len = np.zeros(B, np.int64)
    for i, it in enumerate(items):
        m, c, s = it.n_seq, it.n_cand, min(S, it.recent.shape[0])
        if padded:
            seq_proj[i, :m].copy_(it.seq_proj)  # device-side copy
            seq_proj[i, m:].zero_()
        seq_cross[i, :m], seq_ts[i, :m], seq_mask[i, :m] = it.seq_cross, it.seq_ts, True
        recent[i, :s] = it.recent[:s]
        cand[i, :c], cand_mask[i, :c] = it.cand, True
        now[i], hist_len[i] = it.now, it.hist_len
    dev = slot.device
    return ServeBatch(seq_proj=seq_proj, seq_cross=_to_device(seq_cross, dev), seq_ts=_to_device(seq_ts, dev),
                      seq_mask=_to_device(seq_mask, dev), recent_items=_to_device(recent, dev),
                      cand=_to_device(cand, dev), cand_mask=_to_device(cand_mask, dev),
                      now=_to_device(now, dev), hist_len=_to_device(hist_len, dev))


def alpha_scratch(slot: ModelSlot, batch: ServeBatch) -> torch.Tensor | None:
    """CPU, when the model materialises alpha (not the fused TWIN path: model.selects_without_alpha; the
    recent-k baseline still does): the calling thread's reusable buffer for alpha [B, A, Cb, Lb] (16 MB
    per W1 request), grown on demand; one per thread because a batch's requests may run on several
    (run_batch). Without it glibc maps fresh pages for an allocation that size on every batch (~4,300
    page faults per W1 request, 10 ms of CPU) unless service.malloc_tuning keeps freed memory, and even
    then for a batch whose alpha passes its 32 MB mmap threshold. Accelerators: None (their caching allocators reuse
    memory already)."""
    if slot.device.type != "cpu":
        return None
    B, Lb = batch.seq_mask.shape
    n = B * slot.cfg.n_heads * batch.cand.shape[1] * Lb
    me = threading.get_ident()
    buf = slot.alpha_scratch.get(me)
    if buf is None or buf.numel() < n:
        slot.alpha_scratch.pop(me, None)  # free the old one first
        buf = slot.alpha_scratch[me] = torch.empty(n, dtype=torch.float32)
    return buf


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # kernels are asynchronous: sync so the stage timings are real
        torch.cuda.synchronize(device)


# A lone request's ESU and tower split by candidates into slices at least this big. Measured on the 2-core dev
# box with a one-off script (docs/benchmarks.md, 2026-12-02): at W1 two slices of 50 took ~10.5-11.7 ms against ~9-9.2 unsplit (the
# ESU is ~100 small torch ops whose Python glue holds the GIL, so two threads wait on each other); at W3
# (500 candidates) two slices are no slower.
MIN_CANDIDATES_PER_SLICE = 256


def run_batch(slot: ModelSlot, items: list[ScoreInputs], branches: Executor | None = None,
              n_branches: int = 1) -> list[ScoreResult]:
    """-> one ScoreResult per item, same order.

    CPU with `branches` (an executor of n_branches - 1 threads) and several requests: the batch is cut
    into up to n_branches contiguous groups that run side by side, this thread taking the first. On a
    CPU a batch of B costs B times one request, so this, not padding requests together, is what turns
    concurrency into throughput; each group's own GEMM and top-k stay serial (its thread is already
    one of the parallel ones). A lone request instead splits its GEMM by heads, its selection and its
    ESU + tower by candidates over twin.kernels.cpu_threads (_run_group). Scores do not depend on the
    split: requests never interact in the model, nor do candidates."""
    n = min(n_branches, len(items)) if branches is not None and slot.device.type == "cpu" else 1
    size = (len(items), sum(it.n_cand for it in items))  # the batch's, for the batch metrics
    if n < 2:
        return _run_group(slot, items, size)
    groups = [list(g) for g in np.array_split(np.arange(len(items)), n)]

    def run(idx: list[int]) -> list[ScoreResult]:
        with cpu_threads.serial():
            return _run_group(slot, [items[i] for i in idx], size)

    futures = [branches.submit(run, g) for g in groups[1:]]  # type: ignore[union-attr]
    first = run(groups[0])
    return first + [r for f in futures for r in f.result()]


def _run_group(slot: ModelSlot, items: list[ScoreInputs], size: tuple[int, int]) -> list[ScoreResult]:
    """One padded forward over items. gsu_ms includes padding and host->device copies."""
    explain = any(it.explain for it in items)
    amp = (torch.autocast(slot.device.type, dtype=slot.autocast) if slot.autocast is not None
           else contextlib.nullcontext())
    with torch.inference_mode(), amp:
        t0 = time.perf_counter()
        batch = collate(slot, items)
        fused = slot.gsu_routes.fused(batch.seq_mask.shape[1], batch.cand.shape[1]) if slot.device.type == "cpu" else None
        scratch = None if slot.model.selects_without_alpha(batch, fused=fused) else alpha_scratch(slot, batch)
        gsu = slot.model.select(batch, scratch, fused)
        _sync(slot.device)
        t1 = time.perf_counter()
        # candidates are independent given the sequence: the ESU, short-term module and tower of a CPU
        # forward run on candidate slices over the CPU threads (one slice when serial() is in force)
        parts = cpu_threads.split(batch.cand.shape[1], MIN_CANDIDATES_PER_SLICE, lambda lo, hi: slot.model.finish(
            batch.candidates(lo, hi), gsu.candidates(lo, hi), explain=explain)) if slot.device.type == "cpu" \
            else [slot.model.finish(batch, gsu, explain=explain)]
        out = ServeOutput.cat(parts)
        scores = out.scores.float().cpu().numpy()  # [B, Cb]; .cpu() waits for the device
        ex = None
        if explain and out.explain is not None:
            e = out.explain
            ex = (e.positions.cpu().numpy(), e.weight.float().cpu().numpy(),
                  e.alpha_proj.float().cpu().numpy(), e.alpha_bias.float().cpu().numpy())
        t2 = time.perf_counter()
    gsu_ms, esu_ms = (t1 - t0) * 1e3, (t2 - t1) * 1e3
    results = []
    for i, it in enumerate(items):
        c = it.n_cand
        parts = (ex[0][i, :c], ex[1][i, :c], ex[2][i, :c], ex[3][i, :c]) if (ex and it.explain) else (None,) * 4
        results.append(ScoreResult(scores[i, :c].copy(), *parts, gsu_ms=gsu_ms, esu_ms=esu_ms,
                                   batch_requests=size[0], batch_candidates=size[1]))
    return results


def synthetic_inputs(slot: ModelSlot, n_seq: int, n_cand: int, seed: int = 0) -> ScoreInputs:
    """Random but well-formed inputs of a given shape, for warm-up and device probes."""
    g = np.random.default_rng(seed)
    F_h, J_s, D = len(slot.inherent_names), len(slot.cross_names), slot.model.proj_dim
    now = 1_764_400_000_000
    return ScoreInputs(
        slot=slot,
        seq_proj=torch.randn(n_seq, D, generator=torch.Generator().manual_seed(seed)).half().to(slot.device),
        seq_cross=g.random((n_seq, J_s), dtype=np.float32),
        seq_ts=now - np.sort(g.integers(1, 10**10, n_seq))[:n_seq],
        recent=g.integers(0, 2**31, (min(slot.short_len, n_seq), F_h)),
        cand=g.integers(0, 2**31, (n_cand, F_h)),
        now=now, hist_len=n_seq,
    )
