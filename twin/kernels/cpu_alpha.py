"""alpha on the CPU as ONE GEMM that also adds the cross bias: no copy of the bias into the output.

alpha_a = (P_a q_a^T) / sqrt(d_k) + b_a is the product of augmented operands
    K'_a = [P_a | b_a]  [L, d_k + 1]      Q'_a = [q_a / sqrt(d_k) | 1]  [C, d_k + 1],
so the bias rides in the GEMM's inner dimension instead of being broadcast into the [C, L] output first
(what baddbmm does: a 16 MB write at W1 before the GEMM writes it again). -inf in b_a (padding) gives
-inf in alpha. The numbers: for d_k a power of 4 (16: the served models) 1/sqrt(d_k) is a power of two,
so they are bit for bit those of `twin.attention.attention_logits` (tests pin it); otherwise within an
ulp (the query is scaled before the sum instead of after). Measured at W1 on one core: baddbmm with its
bias copy 4.1 ms, this 2.8 ms including the float16 -> float32 conversion of the keys (bench part
"floor_a" is the bare GEMM). Heads are split over twin.kernels.cpu_threads.
"""
from __future__ import annotations

import math

import torch

from twin.kernels import cpu_threads


def alpha_cpu(keys: torch.Tensor, queries: torch.Tensor, bias: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """keys [B, L, A, d_k] (any float dtype and strides, e.g. the key half of float16 projections),
    queries [B, C, A, d_k] float32, bias [B, A, L] float32 (-inf at padding) -> out [B, A, C, L]."""
    B, L, A, dk = keys.shape
    C = queries.shape[1]
    k_aug = torch.empty(A, L, dk + 1, dtype=queries.dtype)  # [A, L, d_k+1], reused for every user
    q_aug = torch.empty(A, C, dk + 1, dtype=queries.dtype)
    scale = 1.0 / math.sqrt(dk)
    for i in range(B):
        def heads(lo: int, hi: int, i: int = i) -> None:  # heads lo..hi-1 of user i on one thread
            k_aug[lo:hi, :, :dk].copy_(keys[i, :, lo:hi].transpose(0, 1))  # converts float16 here
            k_aug[lo:hi, :, dk].copy_(bias[i, lo:hi])
            torch.mul(queries[i, :, lo:hi].transpose(0, 1), scale, out=q_aug[lo:hi, :, :dk])
            q_aug[lo:hi, :, dk] = 1.0
            torch.bmm(q_aug[lo:hi], k_aug[lo:hi].transpose(1, 2), out=out[i, lo:hi])  # [h, C, L]
        cpu_threads.split(A, 1, heads)
    return out
