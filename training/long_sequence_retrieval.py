"""How the long-sequence baselines pick (or pool) behaviors: pure tensor functions, no parameters.

Symbols as in twin.config.TwinConfig: B sequences, C targets each, L behaviors (newest first), H the
inherent embedding width, m hash bits, R hash rounds (SDIM), D a value width. Every ranking breaks
ties as CP-GSU does (twin.attention.round_robin_select): the newer behavior (smaller position) first.
"""
from __future__ import annotations

import torch

from training.consistency import top_positions

NEG_INF = float("-inf")


def rank_by_score(score: torch.Tensor, seq_mask: torch.Tensor, size: int) -> torch.Tensor:
    """The `size` best behaviors by score, ties to the newer one.

    score [B, C, L] (-inf = never selected), seq_mask [B, L] -> positions [B, C, size], -1 where fewer
    than `size` behaviors have a finite score (padding never has one)."""
    B, C, L = score.shape
    score = score.masked_fill(~seq_mask[:, None, :], NEG_INF)
    kk = min(size, L)
    top = top_positions(score, kk)  # [B, C, kk] (score desc, position asc)
    positions = top.masked_fill(score.gather(-1, top) == NEG_INF, -1)
    if kk < size:
        positions = torch.nn.functional.pad(positions, (0, size - kk), value=-1)
    return positions


def same_category_score(target_cat: torch.Tensor, seq_cat: torch.Tensor) -> torch.Tensor:
    """SIM Hard's search: target_cat [B, C], seq_cat [B, L] -> [B, C, L], 0 where the behavior's category
    is the target's, -inf elsewhere (so rank_by_score keeps those only, newest first)."""
    match = seq_cat[:, None, :] == target_cat[:, :, None]  # [B, C, L]
    return torch.zeros(match.shape).masked_fill(~match, NEG_INF)


def simhash_bits(emb: torch.Tensor, planes: torch.Tensor) -> torch.Tensor:
    """SimHash (Charikar 2002): emb [..., H], random hyperplanes planes [H, m] -> bits [..., m] bool,
    the side of each hyperplane the embedding lies on. Near embeddings (small angle) share most bits."""
    return (emb @ planes) > 0


def hamming_distance(target_bits: torch.Tensor, seq_bits: torch.Tensor) -> torch.Tensor:
    """target_bits [B, C, m], seq_bits [B, L, m] bool -> bits that differ [B, C, L] (int64).
    With signs s = +-1, the agreeing bits are (m + s_t . s_b) / 2: one matmul instead of an [B, C, L, m]
    comparison (exact in float32 for m <= 2^24)."""
    m = target_bits.shape[-1]
    s_t, s_b = target_bits.float() * 2 - 1, seq_bits.float() * 2 - 1
    agree = torch.einsum("bcm,blm->bcl", s_t, s_b)  # [B, C, L] in [-m, m]
    return ((m - agree) / 2).round().long()


def sdim_codes(bits: torch.Tensor, tau: int) -> torch.Tensor:
    """bits [..., R*tau] bool -> one bucket code per round [..., R] in [0, 2^tau): round r's signature is
    bits r*tau .. r*tau + tau - 1 read as a binary number."""
    rounds = bits.unflatten(-1, (-1, tau)).long()  # [..., R, tau]
    return (rounds << torch.arange(tau, device=bits.device)).sum(-1)


def sdim_sampled(target_codes: torch.Tensor, seq_codes: torch.Tensor, seq_mask: torch.Tensor) -> torch.Tensor:
    """SDIM's sampled set per round: target_codes [B, C, R], seq_codes [B, L, R], seq_mask [B, L] ->
    [B, C, R, L] bool, True where the behavior's signature in that round equals the target's."""
    same = target_codes[:, :, :, None] == seq_codes.transpose(1, 2)[:, None]  # [B, C, R, L]
    return same & seq_mask[:, None, None, :]


def sdim_bucket_sums(target_codes: torch.Tensor, seq_codes: torch.Tensor, seq_mask: torch.Tensor,
                     values: torch.Tensor, tau: int) -> torch.Tensor:
    """Per round, the sum of the values of the behaviors in the target's sampled set.

    target_codes [B, C, R], seq_codes [B, L, R], seq_mask [B, L], values [B, L, D] -> [B, C, R, D].
    Equal to einsum(sdim_sampled(...), values) but O(L) in the targets: the behaviors are summed once
    per bucket ([B, R * 2^tau, D], a one-hot matmul), then each target reads its bucket (SDIM's point:
    the cost does not grow with C x L)."""
    B, L, R = seq_codes.shape
    n = 1 << tau
    slot = seq_codes + torch.arange(R, device=seq_codes.device) * n  # [B, L, R] bucket index per round
    onehot = torch.zeros(B, L, R * n, dtype=values.dtype, device=values.device)
    onehot.scatter_(-1, slot, 1.0)
    onehot = onehot * seq_mask[:, :, None].to(values.dtype)  # [B, L, R*n], padding in no bucket
    buckets = onehot.transpose(1, 2) @ values  # [B, R*n, D]
    t_slot = target_codes + torch.arange(R, device=target_codes.device) * n  # [B, C, R]
    C = t_slot.shape[1]
    idx = t_slot.reshape(B, C * R, 1).expand(-1, -1, values.shape[-1])  # [B, C*R, D]
    return buckets.gather(1, idx).view(B, C, R, -1)
