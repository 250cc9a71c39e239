"""The paper's long-sequence baselines (TWIN Table 4) in TWIN's own framework: training only.

Each is a `TwinCTR` whose `_long_term` hook is replaced. Embeddings, the short-term module, the
user/context features, the cross features and the tower are TwinCTR's; a baseline differs ONLY in how
it uses the long sequence. Those that retrieve behaviors then run TWIN's ESU (multi-head target
attention with the full K = [K_h K_c] and the cross bias) on the k they retrieved, so the comparison
isolates the retrieval. What each reads of the sequence:

  * avg_pooling: the mean of the values K W^v over all L behaviors (TWIN paper sec. 4, Table 4);
  * sim_hard:    the k newest behaviors of the target's category (SIM, Pi et al. CIKM 2020, sec. 3.2,
                 hard search);
  * sim_soft:    the top-k behaviors by inner product of the item embeddings K_h with the target's
                 (SIM sec. 3.2, soft search; ours are the model's shared embeddings, without gradient
                 through the search, where SIM trains them in an auxiliary task);
  * eta:         the top-k by Hamming distance between m-bit SimHash signatures of the item embeddings
                 (ETA, Chen et al. 2021, arXiv 2108.04468, sec. 3: LSH-based retrieval, then MHTA);
  * sdim:        no retrieval: R rounds of tau-bit SimHash signatures; per round, the values of the
                 behaviors whose signature equals the target's are summed and L2-normalised, and the
                 rounds are averaged (SDIM, Cao et al. 2022, arXiv 2205.10249, sec. 4, hash-based sampling);
  * twin_inconsistent: TWIN whose GSU alpha comes from a separately parameterised attention of the same
                 form (its own W^h, W^q, w^c, beta), the ESU keeping the model's: what consistency buys.
DIN over the 100 newest is the trainer's existing "recent" variant (TwinConfig.gsu="recent": the ESU
over the top_k newest), and TWIN without the cross bias its "nocross" variant.

The config marks a baseline in `extra[TRAINING_ONLY_KEY]`; the model store refuses such configs (serving
has no path for them). Retrieval functions: training.long_sequence_retrieval.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model_store.manifest import TRAINING_ONLY_KEY
from training.long_sequence_retrieval import (
    hamming_distance, rank_by_score, same_category_score, sdim_bucket_sums, sdim_codes, simhash_bits)
from twin.attention import attention_logits, cross_bias, masked_softmax, round_robin_select
from twin.config import TwinConfig
from twin.features import cross_ids
from twin.kernels.torch_gsu import full_lse, gather_alpha
from twin.model import TrainBatch, TwinCTR, _gather_seq

CATEGORY_FEATURES = ("category", "genre")  # SIM Hard's attribute: the synthetic data's, MovieLens'
ETA_BITS = 64  # SimHash bits m of ETA's signatures
SDIM_ROUNDS, SDIM_TAU = 48, 3  # SDIM's m hash rounds of tau bits each (its paper's setting as we read it)
HASH_SEED = 1234  # the random hyperplanes: fixed, part of the model (saved as a buffer)


def _lengths(seq_mask: torch.Tensor) -> torch.Tensor:
    """seq_mask [B, L] -> behaviors up to the last valid one [B] (what the CPU round-robin kernel scans)."""
    L = seq_mask.shape[1]
    return torch.where(seq_mask.any(1), L - seq_mask.flip(1).to(torch.int8).argmax(1), 0)


class LongSequenceBaseline(TwinCTR):
    """A TwinCTR with another use of the long sequence. Subclasses that retrieve implement
    `gsu_ranking`; the ESU then runs on its first top_k. `selects` is False for those that pool."""

    selects = True

    def gsu_ranking(self, b: TrainBatch, size: int) -> torch.Tensor:
        """-> positions [B, C, size] of the retrieved behaviors, best first, -1 = none (no gradient)."""
        raise NotImplementedError

    def _long_term(self, b, queries, cross_parts, bias):
        with torch.no_grad():
            positions = self.gsu_ranking(b, self.cfg.top_k)  # [B, C, k]
        heads, evidence = self._esu(b, queries, cross_parts, bias, positions, positions >= 0)
        return heads, evidence, None

    @torch.no_grad()
    def esu_oracle_weights(self, b: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The ESU over the full sequence (the oracle of paper Fig. 4) and this model's own retrieval."""
        weights, _ = super().esu_oracle_weights(b)
        return weights, self.gsu_ranking(b, self.cfg.top_k)

    def _embed_items(self, raw: torch.Tensor) -> torch.Tensor:
        """raw [..., F_h] -> the shared inherent embeddings K_h [..., H], as the search reads them."""
        return self.inherent_emb(raw)


class _HashingBaseline(LongSequenceBaseline):
    def __init__(self, cfg: TwinConfig, n_bits: int):
        super().__init__(cfg)
        g = torch.Generator().manual_seed(HASH_SEED)
        self.register_buffer("planes", torch.randn(cfg.schema.inherent_dim, n_bits, generator=g))  # [H, m]

    def _bits(self, raw: torch.Tensor) -> torch.Tensor:
        """raw [..., F_h] -> SimHash bits [..., m] of the item embeddings."""
        return simhash_bits(self._embed_items(raw), self.planes)


class SimHard(LongSequenceBaseline):
    """SIM hard search (SIM sec. 3.2): the behaviors of the target's category, the newest first."""

    def __init__(self, cfg: TwinConfig):
        super().__init__(cfg)
        names = cfg.schema.inherent_names
        found = [n for n in CATEGORY_FEATURES if n in names]
        if not found:
            raise ValueError(f"sim_hard needs a category feature {CATEGORY_FEATURES}; the schema has {names}")
        self.category_col = names.index(found[0])

    def gsu_ranking(self, b, size):
        col = self.category_col
        score = same_category_score(b.target[..., col], b.seq_items[..., col])  # [B, C, L]
        return rank_by_score(score, b.seq_mask, size)


class SimSoft(LongSequenceBaseline):
    """SIM soft search (SIM sec. 3.2): the top-k by the inner product of the item embeddings."""

    def gsu_ranking(self, b, size):
        q = self._embed_items(b.target)  # [B, C, H]
        e = self._embed_items(b.seq_items)  # [B, L, H]
        return rank_by_score(torch.einsum("bch,blh->bcl", q, e), b.seq_mask, size)


class Eta(_HashingBaseline):
    """ETA (arXiv 2108.04468, sec. 3): SimHash signatures of the item embeddings, top-k by Hamming
    distance to the target's (ties: the newer behavior)."""

    def __init__(self, cfg: TwinConfig):
        super().__init__(cfg, ETA_BITS)

    def gsu_ranking(self, b, size):
        dist = hamming_distance(self._bits(b.target), self._bits(b.seq_items))  # [B, C, L]
        return rank_by_score(-dist.float(), b.seq_mask, size)


class AvgPooling(LongSequenceBaseline):
    """Average pooling of the values K W^v = K_h W^v_h + K_c W^v_c over all L behaviors (TWIN Table 4)."""

    selects = False

    def _long_term(self, b, queries, cross_parts, bias):
        B, C = queries.shape[:2]
        _, vals = self._split_proj(self._project_sequence(b.seq_items))  # [B, L, A, d_v]
        w = b.seq_mask.to(vals.dtype) / b.seq_mask.sum(1, keepdim=True).clamp_min(1)  # [B, L]
        inh = torch.einsum("bl,blad->bad", w, vals).flatten(1)  # [B, A*d_v]
        cross = torch.einsum("bl,blx->bx", w, torch.cat(cross_parts, -1)) @ self.w_v_cross.weight.T  # [B, A*d_v]
        heads = (inh + cross)[:, None].expand(B, C, -1)
        return heads, torch.zeros(B, C, self.cfg.n_heads), None


class Sdim(_HashingBaseline):
    """SDIM (arXiv 2205.10249, sec. 4): per round r, the behaviors whose tau-bit signature equals the
    target's are the sampled set; their values K W^v are summed, L2-normalised per head; rounds averaged."""

    selects = False

    def __init__(self, cfg: TwinConfig):
        super().__init__(cfg, SDIM_ROUNDS * SDIM_TAU)

    def _long_term(self, b, queries, cross_parts, bias):
        B, C = queries.shape[:2]
        A, dv = self.cfg.n_heads, self.cfg.d_v
        with torch.no_grad():
            t_codes = sdim_codes(self._bits(b.target), SDIM_TAU)  # [B, C, R]
            s_codes = sdim_codes(self._bits(b.seq_items), SDIM_TAU)  # [B, L, R]
        _, vals = self._split_proj(self._project_sequence(b.seq_items))  # [B, L, A, d_v]
        values = torch.cat([vals.flatten(2), *cross_parts], -1)  # [B, L, A*d_v + Cx]
        sums = sdim_bucket_sums(t_codes, s_codes, b.seq_mask, values, SDIM_TAU)  # [B, C, R, A*d_v + Cx]
        inh, cross = sums.split([A * dv, sums.shape[-1] - A * dv], -1)
        per_round = (inh + cross @ self.w_v_cross.weight.T).unflatten(-1, (A, dv))  # [B, C, R, A, d_v]
        heads = F.normalize(per_round, dim=-1).mean(2).flatten(2)  # [B, C, A*d_v]
        return heads, torch.zeros(B, C, A), None


class TwinInconsistent(LongSequenceBaseline):
    """TWIN whose GSU alpha has its own parameters (W^h', W^q', w^c', beta'), the ESU the model's: the
    same form, the same inputs, both learned, only not shared. The GSU's parameters learn through the
    full-sequence log-sum-exp (cfg.full_lse): queries and bias on all L, keys on the k selected, whose
    exact share of its gradient is passed straight through (value unchanged) as TWIN's keys learn
    through the selected behaviors."""

    def __init__(self, cfg: TwinConfig):
        super().__init__(cfg)
        s, A, dk = cfg.schema, cfg.n_heads, cfg.d_k
        self.gsu_w_key = nn.Linear(s.inherent_dim, A * dk, bias=False)
        self.gsu_w_q = nn.Linear(s.inherent_dim, A * dk, bias=False)
        self.gsu_w_c = nn.Parameter(torch.randn(A, s.cross_dim) * 0.1)
        self.gsu_beta = nn.Parameter(torch.ones(A, len(s.cross)))

    def _gsu_parts(self, b: TrainBatch, cross_parts: list[torch.Tensor] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> the GSU's queries [B, C, A, d_k] and cross bias [B, L, A] (from its own w^c', beta')."""
        A, dk = self.cfg.n_heads, self.cfg.d_k
        q = self.gsu_w_q(self._embed_items(b.target)).unflatten(-1, (A, dk))
        if cross_parts is None:
            cross_parts = self.cross_emb.parts(cross_ids(self.cfg.schema, b.seq_cross, b.seq_ts, b.now))
        bias = cross_bias(cross_parts, self.gsu_w_c, self.gsu_beta)
        return q, bias if self.cfg.cross_bias else torch.zeros_like(bias)

    def _gsu_keys(self, raw: torch.Tensor) -> torch.Tensor:
        """raw [..., F_h] -> the GSU's keys [..., A, d_k]"""
        return self.gsu_w_key(self._embed_items(raw)).unflatten(-1, (self.cfg.n_heads, self.cfg.d_k))

    def _gsu_alpha(self, b: TrainBatch, cross_parts: list[torch.Tensor] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> alpha [B, A, C, L] (gradients to the GSU's queries and bias only), queries, bias."""
        q, bias = self._gsu_parts(b, cross_parts)
        with torch.no_grad():
            keys = self._gsu_keys(b.seq_items)  # [B, L, A, d_k]
        return self._full_alpha(keys, q, bias, b.seq_mask), q, bias

    def gsu_ranking(self, b, size):
        alpha, _, _ = self._gsu_alpha(b)
        positions, _, _, _ = round_robin_select(alpha.detach(), size, _lengths(b.seq_mask))
        return positions

    def _long_term(self, b, queries, cross_parts, bias):
        alpha, q_g, bias_g = self._gsu_alpha(b, cross_parts)  # [B, A, C, L]
        positions, valid, _, _ = round_robin_select(alpha.detach(), self.cfg.top_k, _lengths(b.seq_mask))
        heads, evidence = self._esu(b, queries, cross_parts, bias, positions, valid)
        if not self.cfg.full_lse:
            return heads, evidence, None
        # straight-through: d lse / d alpha_l = softmax_l; the selected keys get exactly their share
        share = gather_alpha(masked_softmax(alpha.detach(), b.seq_mask[:, None, None, :]), positions)  # [B, C, A, k]
        keys_sel = self._gsu_keys(_gather_seq(b.seq_items, positions))  # [B, C, k, A, d_k]
        bias_sel = _gather_seq(bias_g, positions).permute(0, 1, 3, 2)  # [B, C, A, k]
        alpha_sel = attention_logits(keys_sel.permute(0, 1, 3, 2, 4), q_g[:, :, :, None, :].detach(),
                                     bias_sel[:, :, :, None, :].detach()).squeeze(-2)  # [B, C, A, k]
        through = (share * (alpha_sel - alpha_sel.detach())).masked_fill(~valid[:, :, None, :], 0.0).sum(-1)
        return heads, evidence, full_lse(alpha) + through  # [B, C, A]


MODELS: dict[str, type[LongSequenceBaseline]] = {
    "avg_pooling": AvgPooling, "sim_hard": SimHard, "sim_soft": SimSoft, "eta": Eta, "sdim": Sdim,
    "twin_inconsistent": TwinInconsistent,
}


def _marked(name: str, **overrides) -> dict:
    return {"extra": {TRAINING_ONLY_KEY: name}, **overrides}


# trainer variants: name -> (TwinConfig overrides, drop item-stat features), as training.trainer.VARIANTS.
# The retrieval baselines cannot afford alpha over all L (that is TWIN's point), so they have no full_lse;
# the pooling ones have no alpha at all, hence no evidence either.
BASELINE_VARIANTS: dict[str, tuple[dict, bool]] = {
    "din": ({"gsu": "recent"}, False),  # = "recent": the ESU on the top_k newest
    "avg_pooling": (_marked("avg_pooling", full_lse=False, evidence=False), False),
    "sim_hard": (_marked("sim_hard", full_lse=False), False),
    "sim_soft": (_marked("sim_soft", full_lse=False), False),
    "eta": (_marked("eta", full_lse=False), False),
    "sdim": (_marked("sdim", full_lse=False, evidence=False), False),
    "twin_inconsistent": (_marked("twin_inconsistent"), False),
}


def baseline_name(cfg: TwinConfig) -> str | None:
    return (cfg.extra or {}).get(TRAINING_ONLY_KEY)


def build_model(cfg: TwinConfig) -> TwinCTR:
    """TwinCTR, or the baseline the config names."""
    name = baseline_name(cfg)
    if name is None:
        return TwinCTR(cfg)
    if name not in MODELS:
        raise ValueError(f"unknown long-sequence baseline {name!r}; choose from {tuple(MODELS)}")
    return MODELS[name](cfg)


def selection_ranking(model: TwinCTR, b: TrainBatch, size: int) -> torch.Tensor:
    """The model's GSU output of `size` behaviors [B, C, size] (-1 = none): TWIN's round-robin union of
    its own alpha, or the baseline's retrieval (paper Fig. 4's x axis)."""
    if isinstance(model, LongSequenceBaseline):
        if not model.selects:
            raise ValueError(f"{type(model).__name__} retrieves nothing (it pools)")
        return model.gsu_ranking(b, size)
    if model.cfg.gsu == "recent":
        raise ValueError("the recent GSU ranks by time only; no consistency curve")
    _, queries = model._queries(b.target)
    _, bias = model._cross(b.seq_cross, b.seq_ts, b.now)
    keys, _ = model._split_proj(model.project_items(b.seq_items))
    alpha = model._full_alpha(keys, queries, bias, b.seq_mask)  # [B, A, C, L]
    positions, _, _, _ = round_robin_select(alpha, size, _lengths(b.seq_mask))
    return positions

