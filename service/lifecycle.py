"""Model lifecycle, as a checklist (TGI / Triton): load -> verify -> projections -> warm up -> ready.

  startup:   the registry's active version is prepared and switched in; without one the service
             is alive but not ready ("no_active_model").
  activate:  prepare the new version completely while the old one keeps serving, then record it in
             the registry and switch (one reference assignment). A version that fails any step is
             refused (409) and nothing changes. In-flight batches finish on the slot they hold.
  rollback:  the registry's previous version; kept prepared after a swap, so it is instant.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import subprocess
import sys
import time

import numpy as np
import torch

from model_store.errors import ArtifactError, RegistryError, VersionNotFoundError
from model_store.registry import ModelRegistry
from service.engine.buckets import clip_buckets, serving_buckets
from service.engine.engine import Engine
from service.engine.forward import run_batch, synthetic_inputs
from service.engine.gsu_route import GsuRoutes
from service.engine.gsu_route_probe import describe, measure_route, route_shapes
from service.engine.slot import ModelSlot
from service.errors import ModelRefused, UnknownVersion
from service.freshness import ProjectionFreshness
from service.settings import Settings
from service.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class ModelManager:
    def __init__(self, settings: Settings, registry: ModelRegistry, redis_handle, keys, engine: Engine):
        self.settings = settings
        self.registry = registry
        self.redis = redis_handle
        self.keys = keys
        self.engine = engine
        self.reasons: list[str] = ["starting"]  # why not ready, model-wise
        self._lock = asyncio.Lock()
        self._previous: ModelSlot | None = None  # kept warm for an instant rollback
        self._refused: set[str] = set()  # versions the watcher failed to prepare (not retried)
        self._task: asyncio.Task | None = None
        self.freshness = ProjectionFreshness(
            lambda: [s for s in (self.engine.active, self._previous) if s is not None], settings.projection_poll_s)

    # ---- startup -------------------------------------------------------------------------------
    async def startup(self) -> None:
        version = await asyncio.to_thread(self.registry.active)
        if version is None:
            self.reasons = ["no_active_model"]
            log.warning("registry %s has no active model: not ready", self.registry.root)
            return
        try:
            async with self._lock:
                self.engine.swap(await self.prepare(version))
            self.reasons = []
        except (ModelRefused, UnknownVersion) as e:
            self.reasons = [e.reason]
            log.error("active model %s could not be served: %s", version, e.detail)

    # ---- watcher: retry a failed startup, follow activations made elsewhere (CLI, another replica)
    def start_watch(self, interval_s: float) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch(interval_s), name="twin-model-watch")
        self.freshness.start()

    async def _watch(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self._follow_registry()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one failure
                log.exception("model watcher failed")

    async def _follow_registry(self) -> None:
        wanted = await asyncio.to_thread(self.registry.active)
        serving = self.engine.active
        if wanted is None or wanted in self._refused or self._lock.locked():
            return
        if serving is not None and serving.version == wanted:
            return
        log.info("registry points at %s, serving %s: switching", wanted, serving.version if serving else None)
        try:
            async with self._lock:
                slot = await self.prepare(wanted)
                self._previous = self.engine.swap(slot)
            self.reasons = []
        except (ModelRefused, UnknownVersion) as e:
            if e.reason in ("artifact_refused", "unknown_version", "warmup_failed", "schema_mismatch"):
                self._refused.add(wanted)  # retrying cannot help; a Redis outage can end, so that is retried
            if serving is None:
                self.reasons = [e.reason]
            log.error("cannot serve registry version %s: %s", wanted, e.detail)

    async def close(self) -> None:
        await self.freshness.close()
        await cancel_and_wait(self._task)

    # ---- admin ---------------------------------------------------------------------------------
    async def activate(self, version: str) -> str:
        async with self._lock:
            current = self.engine.active
            if current is not None and current.version == version:
                return version
            slot = await self.prepare(version)
            try:  # prepare() verified these bytes moments ago (registry.load): no second full read
                await asyncio.to_thread(self.registry.activate, version, verified=True)
            except (ArtifactError, RegistryError) as e:
                raise ModelRefused(f"registry refused {version}: {e}", reason="artifact_refused") from e
            self._previous = self.engine.swap(slot)
            self.reasons = []
            return version

    async def rollback(self) -> str:
        async with self._lock:
            try:
                version = await asyncio.to_thread(self.registry.rollback)
            except RegistryError as e:
                raise ModelRefused(str(e), reason="nothing_to_roll_back") from e
            if self._previous is not None and self._previous.version == version:
                slot = self._previous
            else:
                slot = await self.prepare(version)
            self._previous = self.engine.swap(slot)
            self.reasons = []
            return version

    # ---- the checklist ---------------------------------------------------------------------------
    async def prepare(self, version: str) -> ModelSlot:
        t0 = time.perf_counter()
        # What is alive now lives on (the serving slot, its caches): out of the collector's sight, the
        # collections that preparing a version's many new objects triggers stay short for the serving
        # requests they pause (see Engine.swap)
        gc.freeze()
        steps: dict[str, float] = {}

        async def step(name, coro):
            t = time.perf_counter()
            out = await coro
            steps[name] = time.perf_counter() - t
            return out

        model, manifest = await step("load", self._load(version))                         # 1. load + verify
        slot = await step("build", self._build_slot(version, model, manifest))            # 2. device, stores
        await step("schema", self._check_schema_fits(slot))                               # 3. its schema fits
        await step("projections", self._ensure_projections(slot))                        # 4. projections complete
        await step("warmup", self._warm_up(slot))                                         # 5. one batch per shape
        await step("prefill", self._prefill(slot))                                        # 6. caches of who is served
        slot.warm = True
        log.info("model %s prepared in %.1fs (%s; L=%d, %d L buckets, %d C buckets, %s)", version,
                 time.perf_counter() - t0, ", ".join(f"{k} {v:.2f}s" for k, v in steps.items()), slot.seq_len,
                 len(slot.seq_buckets), len(slot.cand_buckets), slot.autocast or "float32")
        return slot

    async def _prefill(self, slot: ModelSlot) -> None:
        """While another version serves: read the sequences of the users it answered most recently
        (up to swap_prefill_users, at most swap_prefill_s) into the new slot's caches, one user at a
        time and paced to swap_prefill_duty of the wall time, so that its first answers are not all
        cold reads and serving is not starved meanwhile. The catalog row cache is handed over whole
        when the schemas agree (rows are data, not model output)."""
        old, s = self.engine.active, self.settings
        if old is None or old.user_cache is None or slot.user_cache is None or s.swap_prefill_users == 0:
            return
        deadline, n = time.monotonic() + s.swap_prefill_s, 0
        rest = 1.0 / s.swap_prefill_duty - 1.0  # pause per second of reading
        for user in old.user_cache.recent_users(s.swap_prefill_users):
            t = time.monotonic()
            if t > deadline:
                break
            try:
                await self.engine.fetcher.prefetch(slot, user)
            except Exception as e:  # noqa: BLE001 - a cold start is the fallback, not a refusal
                log.warning("prefill of %s stopped after %d users: %r", slot.version, n, e)
                break
            n += 1
            await asyncio.sleep((time.monotonic() - t) * rest)  # serving requests go first
        log.info("prefilled %s with %d users' sequences", slot.version, n)

    async def _load(self, version: str):
        try:
            return await asyncio.to_thread(self.registry.load, version)
        except VersionNotFoundError as e:
            raise UnknownVersion(f"no model version {version!r}", reason="unknown_version") from e
        except (ArtifactError, ValueError, OSError) as e:
            log.error("refusing model %s: %s", version, e)
            raise ModelRefused(f"model {version} refused: {e}", reason="artifact_refused") from e

    async def _build_slot(self, version: str, model, manifest) -> ModelSlot:
        from cache.behavior_store import BehaviorStore
        from cache.catalog_cache import CatalogRowCache
        from cache.catalog_store import CatalogStore
        from cache.local_cache import LocalProjectionCache
        from cache.projection_store import ProjectionStore
        from cache.user_sequence_cache import UserSequenceCache

        s, worker = self.settings, self.engine.worker
        device = worker.device
        model = await worker.call(lambda: model.to(device).eval())  # the inference thread owns it from here
        cfg = model.cfg
        # the model is length-agnostic: cfg.max_len is only its training length, so serving may read
        # more (TWIN_MAX_SEQ_LEN), but never more than a log holds (the BehaviorStore cap)
        L = s.max_seq_len or cfg.max_len
        if L > s.behavior_cap:
            log.warning("L=%d (TWIN_MAX_SEQ_LEN or the model max_len) exceeds TWIN_BEHAVIOR_CAP=%d: reading %d",
                        L, s.behavior_cap, s.behavior_cap)
            L = s.behavior_cap
        # powers of two on GPU (few shapes to warm), 8 steps per octave on CPU (padding is pure compute)
        seq_buckets = (clip_buckets(s.seq_buckets, L) if s.seq_buckets
                       else serving_buckets(min(64, L), L, device.type, align=64))
        cand_buckets = (clip_buckets(s.cand_buckets, s.max_candidates) if s.cand_buckets
                        else serving_buckets(min(8, s.max_candidates), s.max_candidates, device.type))
        client = self.redis.client
        catalog = CatalogStore(client, self.keys, len(cfg.schema.inherent))
        projections = ProjectionStore(client, self.keys, version, model.proj_dim)

        def compute(raw: np.ndarray) -> np.ndarray:  # cache miss policy step 2: project from the catalog row
            with torch.inference_mode():
                return model.project_items(torch.from_numpy(raw).to(device)).half().cpu().numpy()

        local = LocalProjectionCache(s.local_cache_capacity, model.proj_dim, device, projections, catalog, compute)
        behaviors = BehaviorStore(client, self.keys, len(cfg.schema.stored_cross_names()), cap=s.behavior_cap)
        # per slot: cached sequences hold this version's projections, so a swapped-in version starts empty
        users = (UserSequenceCache(max(1, int(s.user_cache_mb * 2**20)), s.user_cache_max_age_s)
                 if s.user_cache_mb > 0 else None)
        serving = self.engine.active
        if (serving is not None and serving.catalog_cache is not None
                and serving.inherent_names == cfg.schema.inherent_names):
            rows = serving.catalog_cache  # catalog rows are data, shared by versions of one schema: stay warm
        else:
            rows = (CatalogRowCache(catalog, s.catalog_cache_capacity, s.catalog_cache_ttl_s)
                    if s.catalog_cache_capacity > 0 else None)
        autocast = torch.float16 if (device.type == "cuda" and s.half_precision) else None
        return ModelSlot(version=version, model=model, manifest=manifest, device=device, autocast=autocast,
                         seq_len=L, seq_buckets=seq_buckets, cand_buckets=cand_buckets, behaviors=behaviors,
                         catalog=catalog, local_cache=local, user_cache=users, catalog_cache=rows,
                         meta={"projections": projections})

    async def _check_schema_fits(self, slot: ModelSlot) -> None:
        """A valid artifact trained on another feature schema cannot read this deployment's stores:
        catalog rows hold 8 bytes per inherent feature, behavior records 4 per stored cross value.
        Refused here (409 schema_mismatch), not discovered as failing requests after the switch."""
        try:
            width = await slot.catalog.stored_width()
        except Exception as e:  # noqa: BLE001 - Redis down: cannot check, cannot serve this version
            raise ModelRefused(f"cannot read the catalog to check {slot.version}'s schema: {e!r}",
                               reason="projections_unavailable") from e
        want = 8 * len(slot.inherent_names)
        if width is not None and width != want:
            raise ModelRefused(f"model {slot.version} reads catalog rows of {len(slot.inherent_names)} inherent "
                               f"features {slot.inherent_names}, the catalog holds rows of {width // 8}",
                               reason="schema_mismatch")
        serving = self.engine.active
        if serving is not None and len(serving.cross_names) != len(slot.cross_names):
            raise ModelRefused(f"model {slot.version} stores cross features {slot.cross_names}, the behavior logs "
                               f"hold records of the serving model's {serving.cross_names}", reason="schema_mismatch")

    async def _ensure_projections(self, slot: ModelSlot) -> None:
        store = slot.meta["projections"]
        try:
            marker = await store.read_marker()
        except Exception as e:  # noqa: BLE001 - Redis down: cannot check, cannot serve this version
            raise ModelRefused(f"cannot read the projection marker of {slot.version}: {e!r}",
                               reason="projections_unavailable") from e
        if marker is None:
            serving = self.engine.active is not None
            log.info("projections of %s missing: running the projector%s", slot.version,
                     f" in a background process at nice {self.settings.prepare_nice}" if serving else "")
            try:
                if serving:  # the serving cores stay the serving process's (nice, one thread, own GIL)
                    await self._project_in_background(slot)
                else:  # nothing to protect: in process, on every core
                    from cache.projector import project_version

                    stats = await project_version(slot.model, slot.version, None, slot.catalog, store, progress=False)
                    log.info("projected %s: %s", slot.version, stats)
            except ModelRefused:
                raise
            except Exception as e:  # noqa: BLE001
                raise ModelRefused(f"projecting {slot.version} failed: {e!r}", reason="projections_incomplete") from e
            if await store.read_marker() is None:
                raise ModelRefused(f"projector finished without a marker for {slot.version}",
                                   reason="projections_incomplete")
        await self._note_generation(slot)

    async def _project_in_background(self, slot: ModelSlot) -> None:
        """`python -m cache.projector` for the version, at niceness prepare_nice with one torch thread."""
        s = self.settings
        url = s.redis_url or self.redis.url  # unset: the embedded server's socket, which the child can reach
        # small batches, and a pause as long as each batch took: the job's write pipelines hold the
        # (single-threaded) Redis server only briefly and half the time, between the serving reads
        cmd = [sys.executable, "-m", "cache.projector", "--registry", str(s.model_root), "--version", slot.version,
               "--key-prefix", self.keys.prefix, "--n-buckets", str(self.keys.n_buckets), "--device",
               slot.device.type, "--nice", str(s.prepare_nice), "--threads", "1", "--batch-size", "2048",
               "--throttle", "1.0", "--no-progress"]
        # subprocess.Popen (vfork + exec), not the event loop's spawn: uvloop forks, and fork() copies the
        # page tables of this large process and makes every thread's next writes copy-on-write faults:
        # a stall of ~100 ms for the requests being served
        proc = await asyncio.to_thread(subprocess.Popen, cmd, env={**os.environ, "REDIS_URL": url},
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        with contextlib.suppress(OSError):  # at once, so that its imports (~1 s of CPU) are niced too
            os.setpriority(os.PRIO_PROCESS, proc.pid, s.prepare_nice)
        try:
            _, err = await asyncio.to_thread(proc.communicate)
        except asyncio.CancelledError:
            proc.kill()
            raise
        if proc.returncode != 0:
            tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise ModelRefused(f"projecting {slot.version} failed (projector exit {proc.returncode}): {tail[0]}",
                               reason="projections_incomplete")

    @staticmethod
    async def _note_generation(slot: ModelSlot) -> None:
        """The change generation the slot's (still empty) caches are current for (service/freshness.py)."""
        try:
            slot.meta["generation"] = (await slot.meta["projections"].generation())[0]
        except Exception as e:  # noqa: BLE001 - Redis failed just after answering: not servable yet
            raise ModelRefused(f"cannot read the projection generation of {slot.version}: {e!r}",
                               reason="projections_unavailable") from e

    def _warm_shapes(self, slot: ModelSlot, serving: bool) -> list[tuple[int, int]]:
        mode = self.settings.warmup
        if mode == "auto":
            mode = "grid" if slot.device.type == "cuda" else "edges"
        if mode == "none":
            return []
        if mode == "grid":
            return [(lb, cb) for lb in slot.seq_buckets for cb in slot.cand_buckets]
        lmin, lmax = slot.seq_buckets[0], slot.seq_buckets[-1]
        cmin, cmax = slot.cand_buckets[0], slot.cand_buckets[-1]
        if serving and slot.device.type == "cpu":
            # On the CPU a batch is padded to its own largest request, not to a bucket (forward.collate),
            # nothing is compiled per shape, and the serving slot keeps the allocator warm: a swap only
            # has to prove the model runs, at the smallest and the largest L. A batch of many candidates
            # there would stall the requests queued behind it for its whole length (C only scales the work).
            return sorted({(lmin, cmin), (lmax, cmin)})
        if slot.device.type == "cpu":  # no per-shape kernels: every L once, and the largest batch grows the heap
            return sorted({(lb, cmin) for lb in slot.seq_buckets} | {(lmax, cmax)})
        return sorted({(lb, cmin) for lb in slot.seq_buckets} | {(lmax, cb) for cb in slot.cand_buckets})

    async def _gsu_routes(self, slot: ModelSlot, run) -> GsuRoutes:
        """Which exact GSU path is faster on this CPU, per shape (service.engine.gsu_route). The
        answer depends on the machine and the model's shapes, not its weights: a version with the same
        heads, head widths and buckets as the serving one takes its routes, so that a swap does not
        hold the inference thread for the probe (~1 s at L = 100,000). Else one shape per call, so
        that serving batches run in between."""
        active = self.engine.active
        dims = lambda s: (s.cfg.n_heads, s.cfg.d_k, s.cfg.d_v, s.seq_buckets, s.cand_buckets)  # noqa: E731
        if active is not None and active.device == slot.device and active.gsu_routes.timings and dims(active) == dims(slot):
            return active.gsu_routes
        timings = [await run(measure_route, slot, lb, cb) for lb, cb in route_shapes(slot)]
        log.info("GSU routes of %s: %s", slot.version, describe(timings))
        return GsuRoutes(slot.cfg.n_heads, timings)

    async def _warm_up(self, slot: ModelSlot) -> None:
        """One batch per shape. While another version serves, each batch runs between the serving
        batches, only when no request waits (MicroBatcher.run_when_idle)."""
        serving = self.engine.active is not None
        shapes = self._warm_shapes(slot, serving)
        run = self.engine.batcher.run_when_idle if serving else self.engine.worker.call
        try:
            for i, (lb, cb) in enumerate(shapes):
                await run(run_batch, slot, [synthetic_inputs(slot, lb, cb, seed=i)])
            if slot.device.type == "cpu" and self.settings.warmup != "none":
                slot.gsu_routes = await self._gsu_routes(slot, run)
        except Exception as e:  # noqa: BLE001 - a model that cannot run a batch is not servable
            raise ModelRefused(f"warm-up of {slot.version} failed: {e!r}", reason="warmup_failed") from e
