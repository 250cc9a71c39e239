"""The TWIN CTR model (Chang et al., KDD 2023, sec. 3.2-3.4) with two entry points sharing one alpha.

Symbols (see TwinConfig): B batch, L behaviors (newest first), C candidates, A heads, k kept by CP-GSU,
d_k/d_v head widths, H inherent width, F_h inherent raw features, J cross features, S short window,
D = A*d_k + A*d_v cached projection width.

* `project_items(item_raw [N, F_h]) -> [N, D]`: what the projector job caches per item:
  [K_h W^h (A*d_k) | K_h W^v_h (A*d_v)]. Caching the inherent half of the values is our addition
  (the paper caches keys only): K W^v = K_h W^v_h + K_c W^v_c, so only the cross half is computed online.
* `forward(TrainBatch) -> logits [B, C]`: training, from raw features, C targets per sequence (one
  request scores many candidates: the targets of one user share its sequence). The keys of all L
  behaviors drive the hard top-k without gradients; the selected behaviors are re-projected with
  gradients through the SAME functions, so gradients reach every parameter via the ESU. With
  `full_lse`, alpha over all L is computed with gradients to the queries and the cross bias (its
  log-sum-exp feeds the tower); the keys learn through the selected behaviors only, as the paper's
  keys do (its GSU has no gradient). Gradients through all L keys too were tried first: a MovieLens
  step (256 sequences of one target each) took ~10 s on the loaded 2-core box, against a median
  0.7 s this way.
* `score(ServeBatch) -> ServeOutput`: serving, from gathered cached projections; also split as
  `select` (GSU) + `finish` (ESU and tower) so the engine can time the two stages.

Example: B=1 user, L=10_000 behaviors, C=100 candidates, A=4, d_k=16, k=100:
  alpha [1, 4, 100, 10_000] -> round-robin union -> positions [1, 100, 100] -> ESU -> scores [1, 100].
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from . import kernels
from .attention import attention_logits, cross_bias, esu_heads, esu_pool, masked_softmax, recent_topk, round_robin_select
from .kernels.cpu_alpha import alpha_cpu
from .kernels.tables import stack_rows, stack_tables
from .kernels.torch_gsu import full_lse, gather_alpha
from .config import TwinConfig
from .features import FeatureGroupEmbedding, context_raw, cross_ids, sequence_means


@dataclass
class TrainBatch:
    target: torch.Tensor      # [B, C, F_h] int64 raw inherent values of the C targets of each sequence
    seq_items: torch.Tensor   # [B, L, F_h] int64 raw inherent values of the behaviors, newest first
    seq_cross: torch.Tensor   # [B, L, J_s] float32 stored cross values
    seq_ts: torch.Tensor      # [B, L] int64 ms
    seq_mask: torch.Tensor    # [B, L] bool, True = real behavior
    now: torch.Tensor         # [B] int64 ms request time
    hist_len: torch.Tensor    # [B] int64 full history length (may exceed L)
    target_mask: torch.Tensor | None = None  # [B, C] bool, True = real target (None: all)
    label: torch.Tensor | None = None  # [B, C] float32

    def to(self, device: torch.device) -> "TrainBatch":
        return TrainBatch(**{k: (v.to(device) if v is not None else None) for k, v in self.__dict__.items()})


@dataclass
class ServeBatch:
    seq_proj: torch.Tensor      # [B, L, D] float16/32 cached projections of the behaviors, newest first
    seq_cross: torch.Tensor     # [B, L, J_s] float32
    seq_ts: torch.Tensor        # [B, L] int64
    seq_mask: torch.Tensor      # [B, L] bool
    recent_items: torch.Tensor  # [B, S, F_h] int64 raw inherent values of the S = min(short_len, L) newest
    cand: torch.Tensor          # [B, C, F_h] int64 raw inherent values of the candidates
    cand_mask: torch.Tensor     # [B, C] bool
    now: torch.Tensor           # [B] int64
    hist_len: torch.Tensor      # [B] int64

    def candidates(self, lo: int, hi: int) -> "ServeBatch":
        """The same users with candidates lo..hi-1 only (views, no copy)."""
        if (lo, hi) == (0, self.cand.shape[1]):
            return self
        return dataclasses.replace(self, cand=self.cand[:, lo:hi], cand_mask=self.cand_mask[:, lo:hi])


@dataclass
class Explain:
    positions: torch.Tensor   # [B, C, k] int64 index into the newest-first sequence, -1 = none
    weight: torch.Tensor      # [B, C, A, k] softmax weight per head
    alpha_proj: torch.Tensor  # [B, C, A, k] projection term of alpha
    alpha_bias: torch.Tensor  # [B, C, A, k] cross bias term of alpha


@dataclass
class ServeOutput:
    scores: torch.Tensor  # [B, C] CTR
    logits: torch.Tensor  # [B, C]
    explain: Explain | None = None

    @staticmethod
    def cat(parts: list["ServeOutput"]) -> "ServeOutput":
        """Outputs of consecutive candidate slices -> one output (dim 1 is C everywhere)."""
        if len(parts) == 1:
            return parts[0]
        ex = None
        if parts[0].explain is not None:
            ex = Explain(*(torch.cat([getattr(p.explain, f.name) for p in parts], 1)
                           for f in dataclasses.fields(Explain)))
        return ServeOutput(torch.cat([p.scores for p in parts], 1), torch.cat([p.logits for p in parts], 1), ex)


@dataclass
class GsuResult:
    """What CP-GSU hands to the ESU stage in serving."""

    positions: torch.Tensor  # [B, C, k]
    valid: torch.Tensor      # [B, C, k]
    alpha_sel: torch.Tensor  # [B, C, A, k] alpha at the selected positions
    q_emb: torch.Tensor      # [B, C, H] candidate inherent embeddings (reused by the tower)
    # J tensors [B, L] int64: the cross feature ids of every behavior; None when cross_rows holds them
    cross_ids: list[torch.Tensor] | None
    # [B, C, A] log-sum-exp of alpha over the FULL valid sequence (0 if none): how much of the history
    # matches, which the softmax over the k selected hides. Filled when cfg.full_lse, else None.
    lse_full: torch.Tensor | None = None
    # [J, B, L] the cross ids as rows of the stacked per-feature tables (twin.kernels.tables), when the
    # CPU kernels read them: stacked once per request for the GSU's and the ESU's tables alike
    cross_rows: torch.Tensor | None = None

    def candidates(self, lo: int, hi: int) -> "GsuResult":
        """Candidates lo..hi-1 only (views; the per-behavior cross ids are shared)."""
        if (lo, hi) == (0, self.positions.shape[1]):
            return self
        c = slice(lo, hi)
        return GsuResult(self.positions[:, c], self.valid[:, c], self.alpha_sel[:, c], self.q_emb[:, c],
                         self.cross_ids, None if self.lse_full is None else self.lse_full[:, c], self.cross_rows)


def _gather_seq(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x [B, L, ...] gathered at positions [B, C, k] (-1 allowed) -> [B, C, k, ...]

    One index_select over the B*L flattened rows: 2-3x faster than advanced indexing on the CPU, and
    x may be a strided view (e.g. the value half of the cached projections: only that half is read).
    """
    B, C, k = positions.shape
    L, tail = x.shape[1], x.shape[2:]
    rows = positions.clamp_min(0) + (torch.arange(B, device=x.device) * L)[:, None, None]  # [B, C, k]
    return x.reshape(B * L, *tail).index_select(0, rows.reshape(-1)).reshape(B, C, k, *tail)


class TwinCTR(nn.Module):
    def __init__(self, cfg: TwinConfig):
        super().__init__()
        self.cfg = cfg
        s = cfg.schema
        A, dk, dv, H = cfg.n_heads, cfg.d_k, cfg.d_v, s.inherent_dim
        cx = s.cross_dim
        std = cfg.emb_init_std
        self.inherent_emb = FeatureGroupEmbedding(s.inherent, std)
        self.cross_emb = FeatureGroupEmbedding(s.cross, std)
        self.context_emb = FeatureGroupEmbedding(s.context, std) if s.context else None
        # W^h and W^v_h in one matrix: the projector caches both halves per item.
        self.w_item = nn.Linear(H, A * (dk + dv), bias=False)
        self.w_q = nn.Linear(H, A * dk, bias=False)
        self.w_v_cross = nn.Linear(cx, A * dv, bias=False)  # W^v_c
        self.w_c = nn.Parameter(torch.randn(A, cx) * 0.1)   # blocks w^c_{a,j}
        self.beta = nn.Parameter(torch.ones(A, len(s.cross)))
        self.w_o = nn.Linear(A * dv, cfg.d_out)
        # Short-term module: single-head target attention over the S newest behaviors (full K).
        self.st_q = nn.Linear(H, cfg.d_out, bias=False)
        self.st_k = nn.Linear(H + cx, cfg.d_out, bias=False)
        self.st_v = nn.Linear(H + cx, cfg.d_out, bias=False)
        ctx_dim = sum(f.dim for f in s.context)
        n_stats = len(s.stored_cross_names()) if cfg.user_stats else 0
        dims = [H + 2 * cfg.d_out + ctx_dim + (A if cfg.evidence else 0) + (A if cfg.full_lse else 0) + n_stats,
                *cfg.mlp_dims]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], 1))
        self.tower = nn.Sequential(*layers)

    # ---- pieces shared by both entry points -------------------------------------------------
    @property
    def proj_dim(self) -> int:
        return self.cfg.proj_dim

    def project_items(self, item_raw: torch.Tensor) -> torch.Tensor:
        """item_raw [..., F_h] int64 -> [..., D] = [K_h W^h | K_h W^v_h] (the projector's function)."""
        return self.w_item(self.inherent_emb(item_raw))

    def _project_sequence(self, seq_items: torch.Tensor) -> torch.Tensor:
        """project_items over a batch's behaviors, each distinct item once: seq_items [B, L, F_h] -> [B, L, D].
        Inherent features are the item's (the paper's K_h), so the item id determines the row. Users
        share items: a training batch of 4 lifelong histories (30,000 behaviors) holds ~12% distinct
        ones, so the projection of all L (the largest forward cost of a step) shrinks by as much."""
        B, L, F = seq_items.shape
        flat = seq_items.reshape(B * L, F)
        ids, inv = torch.unique(flat[:, 0], return_inverse=True)  # [U], [B*L]
        first = torch.full((ids.numel(),), B * L, dtype=torch.int64).scatter_reduce_(
            0, inv, torch.arange(B * L), "amin")  # [U] a row holding each distinct item
        return self.project_items(flat[first])[inv].view(B, L, -1)

    def _split_proj(self, proj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """proj [..., D] -> keys [..., A, d_k], inherent values [..., A, d_v]"""
        A, dk, dv = self.cfg.n_heads, self.cfg.d_k, self.cfg.d_v
        keys, vals = proj.split([A * dk, A * dv], dim=-1)
        return keys.unflatten(-1, (A, dk)), vals.unflatten(-1, (A, dv))

    def _queries(self, cand_raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cand_raw [B, C, F_h] -> q_emb [B, C, H], queries [B, C, A, d_k]"""
        q_emb = self.inherent_emb(cand_raw)
        return q_emb, self.w_q(q_emb).unflatten(-1, (self.cfg.n_heads, self.cfg.d_k))

    def _cross(self, seq_cross, seq_ts, now) -> tuple[list[torch.Tensor], torch.Tensor]:
        """-> J cross embeddings [B, n, e_j] and the cross bias [B, n, A] (zeros when ablated)."""
        parts = self.cross_emb.parts(cross_ids(self.cfg.schema, seq_cross, seq_ts, now))
        bias = cross_bias(parts, self.w_c, self.beta)  # [B, n, A]
        if not self.cfg.cross_bias:
            bias = torch.zeros_like(bias)
        return parts, bias

    def _cross_bias_tables(self) -> list[torch.Tensor]:
        """The cross bias of _cross as one table per cross feature, for inference: T_j = beta_j (E_j
        w^c_j^T) [vocab_j, A], so that b_a(l) = sum_j T_j[id_j(l), a]: one row per id instead of one
        embedding and product per behavior (cross vocabularies are buckets: tens of rows). Equal to
        _cross's bias up to float32 rounding (the same products, by another GEMM kernel)."""
        out, start = [], 0
        for j, table in enumerate(self.cross_emb.tables):
            e = table.weight.shape[1]
            t = (table.weight @ self.w_c[:, start:start + e].T) * self.beta[:, j]  # [vocab_j, A]
            out.append(t if self.cfg.cross_bias else torch.zeros_like(t))
            start += e
        return out

    @staticmethod
    def _bias_from_tables(tables: list[torch.Tensor], ids: list[torch.Tensor]) -> torch.Tensor:
        """tables J x [V_j, A], ids J x [...] -> [..., A]: the J rows summed in order (as the kernel sums them)."""
        out = None
        for t, i in zip(tables, ids):
            term = t.index_select(0, i.reshape(-1)).view(*i.shape, -1)
            out = term if out is None else out + term
        return out

    def _full_alpha(self, keys: torch.Tensor, queries: torch.Tensor, bias: torch.Tensor, seq_mask: torch.Tensor,
                    scratch: torch.Tensor | None = None) -> torch.Tensor:
        """keys [B, L, A, d_k], queries [B, C, A, d_k], bias [B, L, A], seq_mask [B, L]
        -> alpha [B, A, C, L], -inf at padding (the mask rides in the bias, so one pass writes alpha).

        keys may be a strided view (the key half of the cached projections) in float16. On the CPU
        (no autograd) alpha is one GEMM per user that adds the bias in its inner dimension
        (twin.kernels.cpu_alpha); elsewhere attention_logits' baddbmm. scratch: optional 1-D CPU
        buffer of >= B*A*C*L elements of the query dtype that alpha is written into instead of fresh
        memory; the caller must not use it again while alpha lives.
        """
        bias_m = bias.masked_fill(~seq_mask[:, :, None], float("-inf")).permute(0, 2, 1).contiguous()  # [B, A, L]
        return self._alpha(keys, queries, bias_m, scratch)

    @staticmethod
    def _alpha(keys: torch.Tensor, queries: torch.Tensor, bias_m: torch.Tensor, scratch: torch.Tensor | None = None
               ) -> torch.Tensor:
        """_full_alpha with the bias already masked and laid out per head: bias_m [B, A, L] (-inf at padding)."""
        B, L, A, _ = keys.shape
        shape = (B, A, queries.shape[1], L)
        if keys.device.type != "cpu" or torch.is_grad_enabled():
            # one batched GEMM (B > 1: a copy folds (B, A) into one batch dim, cheap on GPUs)
            keys = keys.to(queries.dtype)
            return attention_logits(keys.transpose(1, 2), queries.transpose(1, 2), bias_m[:, :, None, :])
        n = math.prod(shape)
        if scratch is not None and (scratch.numel() < n or scratch.dtype != queries.dtype):
            raise ValueError(f"scratch of {scratch.numel()} {scratch.dtype} cannot hold alpha {shape} {queries.dtype}")
        alpha = (scratch[:n].view(shape) if scratch is not None
                 else torch.empty(shape, dtype=queries.dtype, device=keys.device))
        return alpha_cpu(keys, queries, bias_m, alpha)

    def _select(self, alpha: torch.Tensor, seq_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha [B, A, C, L] -> positions, valid [B, C, k]"""
        positions, valid, _, _ = self._gsu(alpha, seq_mask)
        return positions, valid

    def _gsu(self, alpha: torch.Tensor, seq_mask: torch.Tensor, want_lse: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """alpha [B, A, C, L], seq_mask [B, L] -> positions, valid [B, C, k], alpha_sel [B, C, A, k]
        (alpha at the positions), lse [B, C, A] over the full valid sequence (None unless want_lse)."""
        if self.cfg.gsu == "recent":
            positions, valid = recent_topk(seq_mask, alpha.shape[2], self.cfg.top_k)
            return positions, valid, gather_alpha(alpha, positions), full_lse(alpha) if want_lse else None
        # the CPU kernel scans each user up to its last valid behavior (-inf marks any hole); elsewhere
        # -inf alone: no host sync for the lengths
        lengths = self._lengths(seq_mask) if alpha.device.type == "cpu" else None
        return round_robin_select(alpha, self.cfg.top_k, lengths, want_lse)

    @staticmethod
    def _lengths(seq_mask: torch.Tensor) -> torch.Tensor:
        """seq_mask [B, L] -> [B] int64: one past each user's last valid behavior (0 when none)."""
        L = seq_mask.shape[1]
        return torch.where(seq_mask.any(1), L - seq_mask.flip(1).to(torch.int8).argmax(1), 0)

    def _short_term(self, q_emb, recent_emb, recent_mask) -> torch.Tensor:
        """q_emb [B, C, H], recent_emb [B, S, H+Cx], recent_mask [B, S] -> [B, C, d_out]"""
        q = self.st_q(q_emb)  # [B, C, d]
        k, v = self.st_k(recent_emb), self.st_v(recent_emb)  # [B, S, d]
        att = attention_logits(k[:, None], q[:, :, None, :], None).squeeze(-2)  # [B, C, S]
        w = masked_softmax(att, recent_mask[:, None, :])
        return torch.einsum("bcs,bsd->bcd", w, v)

    def _tower(self, q_emb, twin_heads, evidence, short, lse_full, seq_cross, seq_mask, now, hist_len) -> torch.Tensor:
        """-> logits [B, C]. The interest modules' outputs, the target, and what the paper's production
        model has beside them: user/context features (hour, history length bucket, the user's mean
        cross values over the sequence) and, with full_lse, how much of the whole sequence matches."""
        C = q_emb.shape[1]
        parts = [q_emb, self.w_o(twin_heads), short]
        if self.cfg.evidence:
            parts.append(evidence)
        if self.cfg.full_lse:
            parts.append(lse_full)
        per_user = []
        if self.context_emb is not None:
            per_user.append(self.context_emb(context_raw(self.cfg.schema, now, hist_len)))  # [B, ctx]
        if self.cfg.user_stats:
            per_user.append(sequence_means(seq_cross, seq_mask))  # [B, J_s]
        parts += [p[:, None, :].expand(-1, C, -1) for p in per_user]
        return self.tower(torch.cat(parts, dim=-1)).squeeze(-1)

    def _long_term(self, b: TrainBatch, queries: torch.Tensor, cross_parts: list[torch.Tensor], bias: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The use of the long sequence in training: CP-GSU over all L, then the ESU on the k selected.

        queries [B, C, A, d_k], cross_parts J x [B, L, e_j], bias [B, L, A]
        -> heads [B, C, A*d_v], evidence [B, C, A], lse_full [B, C, A] (None unless cfg.full_lse).
        The one hook the paper's long-sequence baselines (SIM, ETA, SDIM...: training only) replace;
        everything else of the CTR model is shared with them."""
        with torch.no_grad():  # keys of all L behaviors: the hard top-k needs them, without gradient
            keys_all, _ = self._split_proj(self._project_sequence(b.seq_items))  # [B, L, A, d_k]
        lse_full = None
        if self.cfg.full_lse:  # alpha over all L with gradients to the queries and the cross bias
            alpha = self._full_alpha(keys_all, queries, bias, b.seq_mask)  # [B, A, C, L]
            lse_full = full_lse(alpha)  # [B, C, A]
            alpha = alpha.detach()
        else:
            with torch.no_grad():
                alpha = self._full_alpha(keys_all, queries, bias, b.seq_mask)
        with torch.no_grad():
            positions, valid = self._select(alpha, b.seq_mask)  # [B, C, k]
        heads, evidence = self._esu(b, queries, cross_parts, bias, positions, valid)
        return heads, evidence, lse_full

    def _esu(self, b: TrainBatch, queries: torch.Tensor, cross_parts: list[torch.Tensor], bias: torch.Tensor,
             positions: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ESU in training on the selected positions, valid [B, C, k] -> heads [B, C, A*d_v], evidence
        [B, C, A]. Re-projects only the selected behaviors, with gradients, through the same functions.
        """
        keys_sel, vals_sel = self._split_proj(self.project_items(_gather_seq(b.seq_items, positions)))
        bias_sel = _gather_seq(bias, positions).permute(0, 1, 3, 2)  # [B, C, A, k]
        alpha_sel = attention_logits(
            keys_sel.permute(0, 1, 3, 2, 4),  # [B, C, A, k, d_k]
            queries[:, :, :, None, :],        # [B, C, A, 1, d_k]
            bias_sel[:, :, :, None, :],       # [B, C, A, 1, k]
        ).squeeze(-2)  # [B, C, A, k]
        cross_sel = [_gather_seq(p, positions) for p in cross_parts]  # J x [B, C, k, e]
        _, heads, evidence = esu_pool(alpha_sel, vals_sel, torch.cat(cross_sel, dim=-1), self.w_v_cross.weight, valid)
        return heads, evidence

    # ---- training path ------------------------------------------------------------------------
    def forward(self, b: TrainBatch) -> torch.Tensor:
        """-> logits [B, C] (0 at masked targets)."""
        S = self.cfg.short_len
        q_emb, queries = self._queries(b.target)  # [B, C, H], [B, C, A, d_k]
        cross_parts, bias = self._cross(b.seq_cross, b.seq_ts, b.now)  # J x [B, L, e], [B, L, A]
        heads, evidence, lse_full = self._long_term(b, queries, cross_parts, bias)
        recent = torch.cat([self.inherent_emb(b.seq_items[:, :S]), *[p[:, :S] for p in cross_parts]], dim=-1)
        short = self._short_term(q_emb, recent, b.seq_mask[:, :S])
        logits = self._tower(q_emb, heads, evidence, short, lse_full, b.seq_cross, b.seq_mask, b.now, b.hist_len)
        return logits if b.target_mask is None else logits.masked_fill(~b.target_mask, 0.0)

    @torch.no_grad()
    def esu_oracle_weights(self, b: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The ESU run over the FULL sequence (paper Fig. 4's oracle), and what the GSU selected.

        -> weights [B, A, C, L] (each head's softmax over every valid behavior, 0 at padding),
           positions [B, C, k] of the CP-GSU selection (-1 = none)."""
        _, queries = self._queries(b.target)
        _, bias = self._cross(b.seq_cross, b.seq_ts, b.now)
        keys_all, _ = self._split_proj(self.project_items(b.seq_items))
        alpha = self._full_alpha(keys_all, queries, bias, b.seq_mask)  # [B, A, C, L]
        positions, _ = self._select(alpha, b.seq_mask)
        return masked_softmax(alpha, b.seq_mask[:, None, None, :]), positions

    # ---- serving path -------------------------------------------------------------------------
    def select(self, b: ServeBatch, scratch: torch.Tensor | None = None, fused: bool | None = None) -> GsuResult:
        """CP-GSU from cached projections: alpha over all L, round-robin top-k.

        On the CPU (float32 queries, no autograd) alpha and the selection are by default one compiled
        pass over the keys that never writes alpha (twin.kernels.cpu_fused_gsu); elsewhere, or with
        fused=False, alpha is materialised (_full_alpha; scratch: an optional reusable CPU buffer for
        it, see there) and then ranked. Both are exact for their alpha, which differ by float32 rounding.
        On the CPU the cross features' ids and bias come from one compiled pass too (twin.kernels.cpu_cross;
        the same numbers as cross_ids and _bias_from_tables)."""
        q_emb, queries = self._queries(b.cand)  # [B, C, H], [B, C, A, d_k]
        tables = self._cross_bias_tables()  # J x [V_j, A]
        if kernels.fused_applies(b.seq_proj, queries.dtype):  # CPU: the cross ids and bias in one compiled pass
            table = stack_tables(tables, side_by_side=False)  # [R, A]
            fused = self.selects_without_alpha(b, queries.dtype, fused)
            rows, bias_m = kernels.cross_rows(self.cfg.schema, b.seq_cross, b.seq_ts, b.now,
                                              None if fused else table, b.seq_mask)  # [J, B, L], [B, A, L]
            if fused:  # the bias is summed inside the kernel
                positions, alpha_sel, lse = kernels.select_fused(b.seq_proj, table, rows, b.seq_mask, queries,
                                                                 self._lengths(b.seq_mask), self.cfg.top_k, self.cfg.full_lse)
                return GsuResult(positions, positions >= 0, alpha_sel, q_emb, None, lse, rows)
            keys, _ = self._split_proj(b.seq_proj)  # [B, L, A, d_k] view; only this half is converted
            alpha = self._alpha(keys, queries, bias_m, scratch)  # [B, A, C, L]
            positions, valid, alpha_sel, lse = self._gsu(alpha, b.seq_mask, self.cfg.full_lse)
            return GsuResult(positions, valid, alpha_sel, q_emb, None, lse, rows)
        ids = cross_ids(self.cfg.schema, b.seq_cross, b.seq_ts, b.now)  # J x [B, L]
        bias = self._bias_from_tables(tables, ids)  # [B, L, A]
        keys, _ = self._split_proj(b.seq_proj)  # [B, L, A, d_k] view
        alpha = self._full_alpha(keys, queries, bias, b.seq_mask, scratch)  # [B, A, C, L]
        positions, valid, alpha_sel, lse = self._gsu(alpha, b.seq_mask, self.cfg.full_lse)
        return GsuResult(positions, valid, alpha_sel, q_emb, ids, lse)

    def _seq_cross_ids(self, g: GsuResult, take: Callable[[torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
        """J x [B, ...] cross ids of the behaviors `take` picks from a [B, L] tensor (a slice, a gather):
        those select computed, or its stacked table rows less the rows of the tables before each."""
        if g.cross_ids is not None:
            return [take(i) for i in g.cross_ids]
        offsets = [0]
        for t in self.cross_emb.tables[:-1]:
            offsets.append(offsets[-1] + t.num_embeddings)
        return [take(r) - o for r, o in zip(g.cross_rows, offsets)]

    def _cross_rows(self, ids: list[torch.Tensor]) -> torch.Tensor:
        """J x [B, L] cross ids -> [J, B, L] rows of the stacked per-feature tables the CPU kernels read."""
        return stack_rows(ids, [t.num_embeddings for t in self.cross_emb.tables])

    def selects_without_alpha(self, b: ServeBatch, query_dtype: torch.dtype | None = None,
                              fused: bool | None = None) -> bool:
        """Whether select(b, fused=fused) runs the fused CPU kernel (no alpha buffer needed): not
        fused=False, and CPU, float32 queries (the model's dtype unless given), no autograd, the TWIN GSU."""
        dtype = query_dtype or self.w_q.weight.dtype
        return fused is not False and self.cfg.gsu == "twin" and kernels.fused_applies(b.seq_proj, dtype)

    def finish(self, b: ServeBatch, g: GsuResult, explain: bool = False) -> ServeOutput:
        """ESU over the selected behaviors, short-term module and tower."""
        A, dk, dv = self.cfg.n_heads, self.cfg.d_k, self.cfg.d_v
        if kernels.fused_applies(b.seq_proj, g.q_emb.dtype):  # one compiled pass; selected rows read once
            rows = g.cross_rows if g.cross_rows is not None else self._cross_rows(g.cross_ids)  # type: ignore[arg-type]
            weights, heads_inh, pooled, evidence = kernels.esu(
                b.seq_proj, A * dk, dv, g.positions, g.alpha_sel, [t.weight for t in self.cross_emb.tables], rows)
            heads = esu_heads(heads_inh, pooled, self.w_v_cross.weight)
        else:
            _, vals_all = self._split_proj(b.seq_proj)  # [B, L, A, d_v] view: only the selected rows are read
            vals_inh = _gather_seq(vals_all, g.positions).to(g.q_emb.dtype)  # [B, C, k, A, d_v]
            cross_sel = self.cross_emb.parts(self._seq_cross_ids(g, lambda t: _gather_seq(t, g.positions)))  # J x [B, C, k, e]
            weights, heads, evidence = esu_pool(g.alpha_sel, vals_inh, torch.cat(cross_sel, dim=-1),
                                                self.w_v_cross.weight, g.valid)
        S = b.recent_items.shape[1]  # min(short_len, L)
        recent_cross = self.cross_emb.parts(self._seq_cross_ids(g, lambda t: t[:, :S]))
        recent = torch.cat([self.inherent_emb(b.recent_items), *recent_cross], dim=-1)  # [B, S, H+Cx]
        recent_mask = b.seq_mask[:, :S]
        short = self._short_term(g.q_emb, recent, recent_mask)
        logits = self._tower(g.q_emb, heads, evidence, short, g.lse_full, b.seq_cross, b.seq_mask, b.now,
                             b.hist_len).masked_fill(~b.cand_mask, 0.0)
        ex = None
        if explain:  # the projection term is alpha minus the bias; 0 where nothing was selected
            keep = g.valid[:, :, None, :]
            bias_sel = self._bias_from_tables(self._cross_bias_tables(),
                                              self._seq_cross_ids(g, lambda t: _gather_seq(t, g.positions)))
            bias_sel = bias_sel.permute(0, 1, 3, 2)  # [B, C, A, k], the very numbers alpha added
            ex = Explain(g.positions, weights, (g.alpha_sel - bias_sel).masked_fill(~keep, 0.0),
                         bias_sel.masked_fill(~keep, 0.0))
        return ServeOutput(torch.sigmoid(logits), logits, ex)

    def score(self, b: ServeBatch, explain: bool = False) -> ServeOutput:
        return self.finish(b, self.select(b), explain)
