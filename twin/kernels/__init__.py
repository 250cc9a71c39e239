"""Machinery for speed behind `twin.attention`: the CP-GSU selection kernels and the CPU thread split.

`select(alpha, lengths, k, want_lse)` is the one entry point: float32 CPU alpha goes to the compiled
kernel (`cpu_gsu`), anything else (CUDA, half precision) to the torch ops (`torch_gsu`). Both return
the same positions, alpha at them and full-sequence log-sum-exp; tests pin them to each other and to
a plain Python reference.
"""
from __future__ import annotations

import torch

from twin.kernels.torch_gsu import select_torch


def select(alpha: torch.Tensor, lengths: torch.Tensor, k: int, want_lse: bool = False
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """alpha [B, A, C, L] (-inf at padding), lengths [B] (valid behaviors lie before lengths[b])
    -> positions [B, C, k] int64 (-1 = none), alpha_sel [B, C, A, k], lse [B, C, A] or None."""
    if alpha.device.type == "cpu" and alpha.dtype == torch.float32:
        from twin.kernels.cpu_gsu import select_cpu  # numba: imported (and compiled) on first use

        return select_cpu(alpha, lengths, k, want_lse)
    return select_torch(alpha, k, want_lse)
