"""The score endpoint's work around the engine: validate against the serving model's schema, hand the
request to `Engine.score` (admit, fetch, queue, answer, release), record metrics, shape the answer."""
from __future__ import annotations

import time

import numpy as np

from service.api.schemas import Candidate, CandidateExplain, ScoreRequest, ScoreResponse, SelectedBehavior, Timings
from service.context import ServiceContext
from service.engine.fetch import Fetched
from service.engine.request import ScoreResult
from service.engine.slot import ModelSlot
from service.errors import NotReady, field_error


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def candidate_matrix(slot: ModelSlot, candidates: list[Candidate]) -> tuple[np.ndarray, np.ndarray]:
    """-> raw [C, F_h] int64 (client values, 0 elsewhere), given [C, F_h] bool. 422 names an unknown feature."""
    names = slot.inherent_names
    index = {n: j for j, n in enumerate(names)}
    raw = np.zeros((len(candidates), len(names)), np.int64)
    given = np.zeros(raw.shape, np.bool_)
    for i, c in enumerate(candidates):
        raw[i, 0], given[i, 0] = c.item_id, True
        for name, value in (c.features or {}).items():
            j = index.get(name)
            if j is None or j == 0:
                msg = (f"unknown feature {name!r} for model {slot.version}; known: {names[1:]}" if j is None
                       else "give the item id as candidates[i].item_id, not as a feature")
                raise field_error(("body", "candidates", i, "features", name), msg, name)
            raw[i, j], given[i, j] = value, True
    return raw, given


def _explain(f: Fetched, r: ScoreResult, cands: list[Candidate]) -> list[CandidateExplain]:
    out = []
    for j, c in enumerate(cands):
        pos = r.positions[j]  # [k]
        w, ap, ab = r.weight[j].T.tolist(), r.alpha_proj[j].T.tolist(), r.alpha_bias[j].T.tolist()  # [k][A]
        sel = [SelectedBehavior(position=int(p), item_id=int(f.seq_item_ids[p]), ts=int(f.seq_ts[p]),
                                weight=w[t], alpha_proj=ap[t], alpha_bias=ab[t])
               for t, p in enumerate(pos.tolist()) if p >= 0]
        out.append(CandidateExplain(item_id=c.item_id, selected=sel))
    return out


async def score(ctx: ServiceContext, body: ScoreRequest, deadline_ms: float) -> ScoreResponse:
    t0 = time.perf_counter()
    deadline = time.monotonic() + deadline_ms / 1e3
    slot = ctx.engine.active  # pinned: this request runs, fetches and answers on this version only
    if slot is None:
        raise NotReady("no model is serving yet", reason="no_active_model")
    limit = ctx.settings.max_candidates
    if len(body.candidates) > limit:
        raise field_error(("body", "candidates"), f"List should have at most {limit} items after validation, "
                          f"not {len(body.candidates)}", len(body.candidates), kind="too_long")
    cand, given = candidate_matrix(slot, body.candidates)
    now = body.context.ts if body.context is not None and body.context.ts is not None else now_ms()
    scored = await ctx.engine.score(slot, body.user_id, cand, given, now, body.explain, deadline)
    fetched, result = scored.fetched, scored.result
    timings = {"queue": scored.admit_ms + result.queue_ms, "fetch": fetched.fetch_ms, "gsu": result.gsu_ms,
               "esu": result.esu_ms, "total": (time.perf_counter() - t0) * 1e3}
    m = ctx.metrics
    m.observe_stages(timings)
    m.cache_hits.inc(fetched.cache_hits)
    m.cache_misses.inc(fetched.cache_misses)
    for reason in fetched.reasons:
        m.degraded.labels(reason=reason).inc()
    return ScoreResponse(
        model_version=slot.version, scores=result.scores.tolist(), degraded=bool(fetched.reasons),
        degraded_reasons=fetched.reasons, timings_ms=Timings(**{k: round(v, 3) for k, v in timings.items()}),
        explain=_explain(fetched, result, body.candidates) if body.explain else None,
    )
