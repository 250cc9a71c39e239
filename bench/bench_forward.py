"""In-process parts of `make bench`: floors, the selection kernels, the TWIN serving forward, raw MHTA,
and the K_h projection against the cached gather, at W1, W2 and W3 (shared/DESIGN.md sec. 4).

Every part of a workload is timed round by round, interleaved (round r runs part 1, part 2, ... then
round r+1), so load from other jobs on a shared box falls on all of them alike; the ratios are taken
between p50s of the same run. Parts:
  floor_a    alpha's GEMM alone (keys already float32, [A, d_k, L] contiguous) into a preallocated buffer;
  floor_b    floor_a + one read pass over alpha (a row amax): the memory/compute floor of an exact TWIN;
  floor_c    floor_a + torch.topk(k) on every row;
  twin       the serving forward as the engine runs it: service.engine.forward.run_batch on a ModelSlot
             (collate, the thread's alpha scratch buffer, select, finish), float16 cached projections,
             the service's threads and malloc settings; twin_lse: the same with cfg.full_lse;
  raw_mhta   the paper's ablation: no cache, no split: every request embeds its L behaviors and projects
             the full K = [K_h, K_c] (one GEMM per behavior, cross features included), then the same
             alpha, selection and ESU;
  kh_project the K_h W^h projection of the L behaviors alone; kh_gather the cached gather that replaces
             it for a user new to the process (LocalProjectionCache hit path: id -> slot lookup and the
             slab rows); kh_user_cache what replaces it for a warm user (the user-sequence cache hands
             the gathered [L, D] over: a lookup);
  kernel_cpu / kernel_torch  the selection alone on a precomputed alpha (compiled kernel / torch ops);
  read_pass  torch amax over the same alpha (what kernel_cpu is measured against);
  gsu_fused  the fused CPU GSU: alpha and the selection in one pass from the float16 projections,
             alpha never written (twin.kernels.cpu_fused_gsu); gsu_materialised the other exact path:
             alpha's GEMM into the thread's scratch buffer (cpu_alpha), then kernel_cpu. twin and raw_mhta
             take the path the engine's warm-up would pick: the faster at the world's L and C = 100
             (service.engine.gsu_route);
  esu_kernel the ESU's softmax, evidence and pooled sums from the cached projections (twin.kernels.cpu_esu).
Floors use the same threads as the forward (alpha's GEMM split by heads over twin.kernels.cpu_threads).
On CUDA (`device="cuda"`): the model and the cached projections live on the GPU, the forward runs under
the engine's float16 autocast, floors are float16 GEMMs, every timed call ends with a device sync,
and the CPU-only parts (kernel_cpu, read_pass on the host) are left out.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from bench.bench_service import N_AUTHORS, N_CATS, N_ITEMS, NOW, items
from cache.layout import Keys
from cache.local_cache import LocalProjectionCache
from cache.projection_store import ProjectionStore
from cache.user_sequence_cache import UserSequence, UserSequenceCache
from service.engine.forward import alpha_scratch, collate, run_batch
from service.engine.gsu_route import GsuRoutes
from service.engine.gsu_route_probe import describe, measure_route, route_shapes
from service.engine.request import ScoreInputs
from service.engine.slot import ModelSlot
from service.engine.worker import default_parallel_threads, default_threads
from training.schemas import synthetic_schema
from twin import kernels
from twin.config import TwinConfig
from twin.kernels import cpu_threads
from twin.kernels.cpu_gsu import select_cpu
from twin.kernels.tables import stack_tables
from twin.kernels.torch_gsu import select_torch
from twin.model import TwinCTR

WORKLOADS = {"W1": (10_000, 100), "W2": (100_000, 100), "W3": (10_000, 500)}  # L, C
K, HEADS = 100, 4


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def model_for(L: int, full_lse: bool = False) -> TwinCTR:
    torch.manual_seed(0)  # same weights for every L and flag
    cfg = TwinConfig(schema=synthetic_schema(N_ITEMS, N_AUTHORS, N_CATS), n_heads=HEADS, top_k=K, max_len=L,
                     full_lse=full_lse)
    return TwinCTR(cfg).eval()


def user_history(uid: int, L: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> item ids [L] (Zipf 1.1), ts [L] newest first, cross [L, 2], as bench_service seeds them."""
    g = np.random.default_rng(uid)
    ts = (NOW - np.sort(g.integers(60_000, 10**11, L))).astype(np.int64)
    cross = np.stack([g.random(L, dtype=np.float32), (g.random(L) > 0.7).astype(np.float32)], 1)
    return g.zipf(1.1, L).astype(np.int64) % N_ITEMS, ts, cross


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class World:
    """One workload's model, slot and per-user engine inputs."""

    L: int
    C: int
    model: TwinCTR
    slot: ModelSlot
    slot_lse: ModelSlot
    inputs: list[ScoreInputs]
    raw_items: list[np.ndarray]  # [L, F_h] raw inherent values per user
    device: torch.device


def _slot(model: TwinCTR, L: int, device: torch.device) -> ModelSlot:
    # the stores are unused: run_batch only reads the model, device and bucket fields
    cuda = device.type == "cuda"
    return ModelSlot(version="bench", model=model.to(device), manifest=None, device=device,  # type: ignore[arg-type]
                     autocast=torch.float16 if cuda else None, seq_len=L, seq_buckets=[64, L],
                     cand_buckets=[8, 512], behaviors=None, catalog=None, local_cache=None)  # type: ignore[arg-type]


def build_world(name: str, n_users: int, device: torch.device = torch.device("cpu")) -> World:
    L, C = WORKLOADS[name]
    model, model_lse = model_for(L), model_for(L, full_lse=True)
    inputs, raws = [], []
    for u in range(n_users):
        ids, ts, cross = user_history(u, L)
        raw = items(ids)
        with torch.inference_mode():
            proj = model.project_items(torch.from_numpy(raw)).half().to(device)  # [L, D] as the cache holds it
        cand = items(np.random.default_rng(10_000 + u).integers(0, N_ITEMS, C))
        inputs.append(ScoreInputs(slot=None, seq_proj=proj, seq_cross=cross, seq_ts=ts,  # type: ignore[arg-type]
                                  recent=raw[:model.cfg.short_len], cand=cand, now=NOW, hist_len=L))
        raws.append(raw)
    slot, slot_lse = _slot(model, L, device), _slot(model_lse, L, device)
    for s in (slot, slot_lse):  # the GSU paths the engine's warm-up would pick: timed at the shapes it times
        s.gsu_routes = GsuRoutes(HEADS, [measure_route(s, lb, cb) for lb, cb in route_shapes(s)])
    return World(L, C, model, slot, slot_lse, inputs, raws, device)


def _alpha_inputs(w: World, u: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """keys^T [A, d_k, L] float32 contiguous, queries [A, C, d_k], bias+mask [A, 1, L] of user u."""
    m, it, dev = w.model, w.inputs[u], w.device
    t = lambda a: torch.from_numpy(a).to(dev)  # noqa: E731
    with torch.inference_mode():
        _, q = m._queries(t(it.cand)[None])
        _, bias = m._cross(t(it.seq_cross)[None], t(it.seq_ts)[None], torch.tensor([it.now], device=dev))
        keys, _ = m._split_proj(it.seq_proj[None])
    dtype = torch.float16 if dev.type == "cuda" else torch.float32  # the engine's alpha dtype there
    kt = keys[0].to(dtype).permute(1, 2, 0).contiguous()  # [A, d_k, L]
    return kt, q[0].transpose(0, 1).to(dtype).contiguous(), bias[0].T[:, None, :].contiguous()


def floors(w: World, u: int) -> dict[str, Callable[[], object]]:
    kt, q, _ = _alpha_inputs(w, u)
    A = kt.shape[0]
    out = torch.empty(A, w.C, w.L, dtype=kt.dtype, device=w.device)

    def gemm(then: Callable[[torch.Tensor], object] | None = None) -> Callable[[], object]:
        def heads(lo: int, hi: int) -> None:
            torch.bmm(q[lo:hi], kt[lo:hi], out=out[lo:hi])
            if then is not None:
                then(out[lo:hi])
        if w.device.type == "cuda":
            return lambda: (heads(0, A), sync(w.device))
        return lambda: cpu_threads.split(A, 1, heads)

    return {"floor_a": gemm(), "floor_b": gemm(lambda x: x.amax(-1)),
            "floor_c": gemm(lambda x: torch.topk(x, K, dim=-1))}


_BRANCHES: dict[int, ThreadPoolExecutor] = {}


def engine_forward(slot: ModelSlot, it: ScoreInputs) -> Callable[[], object]:
    """run_batch as the InferenceWorker calls it: with its branch threads (parallel - 1 of them)."""
    one = ScoreInputs(**{**it.__dict__, "slot": slot})
    if slot.device.type != "cpu":
        return lambda: run_batch(slot, [one])
    dev = torch.device("cpu")
    threads, parallel = default_threads(dev), default_parallel_threads(dev)
    if parallel > 1 and parallel not in _BRANCHES:
        _BRANCHES[parallel] = ThreadPoolExecutor(parallel - 1, initializer=torch.set_num_threads, initargs=(threads,))
    return lambda: run_batch(slot, [one], _BRANCHES.get(parallel), parallel)


def raw_mhta(w: World, u: int) -> Callable[[], object]:
    """No cache, no split: embed the L behaviors, project K = [K_h, K_c] with one dense matrix
    [H + Cx, D] per request, then the same alpha, selection and ESU (select/finish on the result)."""
    m, it, raw = w.model, w.inputs[u], torch.from_numpy(w.raw_items[u]).to(w.device)
    s = m.cfg.schema
    g = torch.Generator().manual_seed(1)
    w_full = torch.randn(s.inherent_dim + s.cross_dim, m.proj_dim, generator=g) * 0.05  # [H+Cx, D]
    w_full[:s.inherent_dim] = m.w_item.weight.T.detach().cpu()
    w_full = w_full.to(w.device)
    base = ScoreInputs(**{**it.__dict__, "slot": w.slot})
    amp = w.slot.autocast

    def run() -> None:
        with torch.inference_mode(), torch.autocast(w.device.type, dtype=amp, enabled=amp is not None):
            b = collate(w.slot, [base])
            cross = torch.cat(m._cross(b.seq_cross, b.seq_ts, b.now)[0], dim=-1)  # [1, L, Cx]
            k_full = torch.cat([m.inherent_emb(raw)[None], cross], dim=-1)  # [1, L, H+Cx]
            b.seq_proj = k_full @ w_full  # [1, L, D]: projected on every request
            fused = w.slot.gsu_routes.fused(w.L, w.C) if w.device.type == "cpu" else None  # the serving forward's path
            scratch = None if m.selects_without_alpha(b, fused=fused) else alpha_scratch(w.slot, b)
            m.finish(b, m.select(b, scratch, fused)).scores.cpu()
    return run


def kh_parts(w: World, u: int) -> dict[str, Callable[[], object]]:
    m, raw, ids = w.model, torch.from_numpy(w.raw_items[u]).to(w.device), w.raw_items[u][:, 0]
    cache = LocalProjectionCache(max(200_000, 2 * w.L), m.proj_dim, w.device,
                                 ProjectionStore(None, Keys("bench"), "v1", m.proj_dim), None, None)
    uniq = np.unique(ids)
    with torch.inference_mode():
        rows = m.project_items(torch.from_numpy(items(uniq)).to(w.device)).half()
        cache._insert(uniq, rows.cpu().numpy() if w.device.type == "cpu" else rows)

    def project() -> None:
        with torch.inference_mode():
            m.project_items(raw)
            sync(w.device)

    # a warm user: the user-sequence cache hands its gathered [L, D] projections over whole
    seqs = UserSequenceCache(2**31, 3600.0)
    seqs.put(u, UserSequence(item_id=ids, ts=w.inputs[u].seq_ts, cross=w.inputs[u].seq_cross,
                             seq_proj=w.inputs[u].seq_proj, recent=w.inputs[u].recent,
                             recent_found=np.ones(len(w.inputs[u].recent), bool), total=w.L, newest=b"x", born=0.0))
    seqs.clock = lambda: 1.0
    return {"kh_project": project, "kh_gather": lambda: (_gather_sync(cache, ids), sync(w.device)),
            "kh_user_cache": lambda: seqs.lookup(u).seq_proj}


def _gather_sync(cache: LocalProjectionCache, ids: np.ndarray) -> None:
    """The all-hits path of LocalProjectionCache.gather, without an event loop: it never awaits."""
    coro = cache.gather(ids)
    try:
        coro.send(None)
    except StopIteration as done:
        assert done.value.hits == ids.size
    else:  # pragma: no cover - a miss would await Redis
        raise AssertionError("kh_gather missed the cache")


def kernel_parts(w: World, u: int, with_torch: bool) -> dict[str, Callable[[], object]]:
    m, it = w.model, w.inputs[u]
    amp = w.slot.autocast
    with torch.inference_mode(), torch.autocast(w.device.type, dtype=amp, enabled=amp is not None):
        b = collate(w.slot, [ScoreInputs(**{**it.__dict__, "slot": w.slot})])
        _, q = m._queries(b.cand)
        _, bias = m._cross(b.seq_cross, b.seq_ts, b.now)
        keys, _ = m._split_proj(b.seq_proj)
        alpha = m._full_alpha(keys, q, bias, b.seq_mask).clone()  # [1, A, C, L]
    lengths = torch.tensor([w.L])
    if w.device.type == "cuda":
        return {"read_pass": lambda: (alpha.amax(-1), sync(w.device)),
                "kernel_torch": lambda: (select_torch(alpha, K, False), sync(w.device)),
                "kernel_torch_lse": lambda: (select_torch(alpha, K, True), sync(w.device))}
    with torch.inference_mode():
        bias_table = stack_tables(m._cross_bias_tables(), side_by_side=False)
        rows, _ = kernels.cross_rows(m.cfg.schema, b.seq_cross, b.seq_ts, b.now)
        g = m.select(b)
        tables = [t.weight for t in m.cross_emb.tables]
    scratch = torch.empty(alpha.numel())
    A, dk, dv = m.cfg.n_heads, m.cfg.d_k, m.cfg.d_v

    def materialised() -> object:
        with torch.inference_mode():
            return select_cpu(m._full_alpha(keys, q, bias, b.seq_mask, scratch), lengths, K, False)

    parts = {"read_pass": lambda: cpu_threads.split(alpha.shape[1], 1, lambda lo, hi: alpha[:, lo:hi].amax(-1)),
             "kernel_cpu": lambda: select_cpu(alpha, lengths, K, False),
             "kernel_cpu_lse": lambda: select_cpu(alpha, lengths, K, True),
             "gsu_fused": lambda: kernels.select_fused(b.seq_proj, bias_table, rows, b.seq_mask, q, lengths, K, False),
             "gsu_materialised": materialised,
             "esu_kernel": lambda: kernels.esu(b.seq_proj, A * dk, dv, g.positions, g.alpha_sel, tables, rows)}
    if with_torch:
        parts["kernel_torch"] = lambda: select_torch(alpha, K, False)
    return parts


def measure(parts: dict[str, list[Callable[[], object]]], rounds: int, per_round: int) -> dict[str, list[float]]:
    """parts: name -> one callable per user. Round-robin over parts within each round; users cycle."""
    lat: dict[str, list[float]] = {n: [] for n in parts}
    for fns in parts.values():  # warm: compile, fault in, fill caches
        for f in fns[:2]:
            f()
    for r in range(rounds):
        for name, fns in parts.items():
            for i in range(per_round):
                f = fns[(r * per_round + i) % len(fns)]
                t0 = time.perf_counter()
                f()
                lat[name].append((time.perf_counter() - t0) * 1e3)
    return lat


def copy_bandwidth_gbs(mb: int = 256) -> float:
    """Measured memcpy bandwidth (read + write bytes / s) of a buffer far larger than the caches."""
    src = torch.ones(mb * 2**20 // 4)
    dst = torch.empty_like(src)
    best = math.inf
    for _ in range(5):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best / 1e9


def request_bytes(L: int, C: int, model: TwinCTR) -> int:
    """Bytes a forward must move at least: alpha written and read once (float32), the key half of the
    float16 projections read, the selected value rows read."""
    A, dk, dv = model.cfg.n_heads, model.cfg.d_k, model.cfg.d_v
    return 2 * A * C * L * 4 + L * A * dk * 2 + C * K * A * dv * 2


def run_workload(name: str, quick: bool, raw: bool = True, device: torch.device = torch.device("cpu")) -> dict:
    n_users = 2 if name == "W2" else 4
    w = build_world(name, n_users, device)
    rounds, per_round = (3, 2) if quick else ((6, 3) if name == "W2" else (10, 5))
    us = range(n_users)
    parts: dict[str, list[Callable[[], object]]] = {}
    for u in us:
        for k_, f in {**floors(w, u), "twin": engine_forward(w.slot, w.inputs[u]),
                      "twin_lse": engine_forward(w.slot_lse, w.inputs[u]),
                      **({"raw_mhta": raw_mhta(w, u)} if raw else {}), **kh_parts(w, u),
                      **kernel_parts(w, u, with_torch=(name == "W1" and device.type == "cpu"))}.items():
            parts.setdefault(k_, []).append(f)
    if "kernel_torch" in parts and device.type == "cpu":  # ~0.3 s a call: a few calls, outside the rounds
        kt = measure({"kernel_torch": parts.pop("kernel_torch")}, 1, 2 if quick else 3)
    else:
        kt = {}
    lat = {**measure(parts, rounds, per_round), **kt}
    out = {"L": w.L, "C": w.C, "k": K, "heads": HEADS, "users": n_users, "device": str(device),
           "parts": {n: {"p50_ms": pct(v, 50), "p99_ms": pct(v, 99), "n": len(v)} for n, v in lat.items()}}
    p = {n: v["p50_ms"] for n, v in out["parts"].items()}
    out["ratios"] = {
        "twin_over_floor_b": p["twin"] / p["floor_b"],
        "twin_lse_over_floor_b": p["twin_lse"] / p["floor_b"],
        "floor_b_over_floor_a": p["floor_b"] / p["floor_a"],
        "floor_c_over_floor_b": p["floor_c"] / p["floor_b"],
        "kernel_over_read_pass": p.get("kernel_cpu", p.get("kernel_torch", math.nan)) / p["read_pass"],
        "kh_cost_removed": 1.0 - p["kh_gather"] / p["kh_project"],
        "kh_cost_removed_warm_user": 1.0 - p["kh_user_cache"] / p["kh_project"],
    }
    if "raw_mhta" in p:
        out["ratios"]["raw_mhta_over_twin"] = p["raw_mhta"] / p["twin"]
    if "gsu_fused" in p:
        out["ratios"]["gsu_fused_over_materialised"] = p["gsu_fused"] / p["gsu_materialised"]
    if "kernel_torch" in p and "kernel_cpu" in p:
        out["ratios"]["kernel_torch_over_kernel_cpu"] = p["kernel_torch"] / p["kernel_cpu"]
    out["bytes_per_request"] = request_bytes(w.L, w.C, w.model)
    out["gsu_route"] = describe(w.slot.gsu_routes.timings)  # measured when the world was built
    return out
