"""What travels between the event loop and the inference thread for one score request."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from service.engine.slot import ModelSlot

if TYPE_CHECKING:
    from service.engine.batcher import Admission


@dataclass(eq=False)
class ScoreInputs:
    """One request's model inputs, fetched and validated on the event loop. m = behaviors read."""

    slot: ModelSlot
    seq_proj: torch.Tensor   # [m, D] float16 cached projections on the slot's device, newest first
    seq_cross: np.ndarray    # [m, J_s] float32 stored cross values
    seq_ts: np.ndarray       # [m] int64 ms
    recent: np.ndarray       # [min(S, m), F_h] int64 raw inherent values of the newest behaviors
    cand: np.ndarray         # [C, F_h] int64 raw inherent values of the candidates
    now: int                 # request time, ms
    hist_len: int            # full history length (may exceed m)
    explain: bool = False

    @property
    def n_seq(self) -> int:
        return int(self.seq_ts.shape[0])

    @property
    def n_cand(self) -> int:
        return int(self.cand.shape[0])


@dataclass
class ScoreResult:
    """One request's share of a batch. k = cfg.top_k, A = heads."""

    scores: np.ndarray                  # [C] float32
    positions: np.ndarray | None        # [C, k] int64 (explain only; -1 = none)
    weight: np.ndarray | None           # [C, A, k] float32 (explain only)
    alpha_proj: np.ndarray | None       # [C, A, k]
    alpha_bias: np.ndarray | None       # [C, A, k]
    gsu_ms: float
    esu_ms: float
    batch_requests: int
    batch_candidates: int
    queue_ms: float = 0.0


@dataclass(eq=False)
class Pending:
    """A request waiting in the batcher. Its future gets a ScoreResult or a ServiceError."""

    inputs: ScoreInputs
    deadline: float                     # time.monotonic() after which it is not worth running
    future: asyncio.Future
    enqueued_at: float = 0.0
    started_at: float = field(default=0.0)
    admission: "Admission | None" = None  # released when the request leaves the queue
