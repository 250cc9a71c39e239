"""Request and response bodies of API v1 (DESIGN.md sec. 6). The OpenAPI document is generated from
these; per-deployment limits (candidates / events per request) are settings, checked in the handlers
and written into the document by `service.app.custom_openapi`.

Ids and times are strict integers in [0, 2^63): 1.5, "7", true or 2**63 are refused with a 422 that
names the field. Floats must be finite (NaN / Infinity are refused). Everything the behavior store would
refuse (an event id over its byte limit, a cross value that overflows float32) is refused here, as a
422, before anything is written: a bad value must never look like a store outage.
"""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt

from cache.behavior_store import MAX_EVENT_ID_BYTES  # the store's own limit, checked here before any write

# The bound is written as exclusiveMaximum 2^63, not maximum 2^63 - 1: a JSON reader that holds numbers
# as float64 (JavaScript, many schema validators and fuzzers) reads 2^63 - 1 as 2^63 and then proposes
# values the service refuses; 2^63 is exact in float64, and every float64 below it is a valid id.
ID_LIMIT = 2**63
Id = Annotated[StrictInt, Field(ge=0, lt=ID_LIMIT, description="Integer id in [0, 2^63).")]
TimeMs = Annotated[StrictInt, Field(ge=0, lt=ID_LIMIT, description="Unix time in milliseconds.")]
FeatureValue = Annotated[StrictInt, Field(ge=0, lt=ID_LIMIT, description="Raw integer value (id, seconds, ...).")]


def _number_only(v: Any) -> Any:
    if isinstance(v, (str, bool)) or v is None:  # JSON numbers only; a float field would coerce "0.5"/true
        raise ValueError("Input should be a finite number")
    return v


FLOAT32_MAX = 3.4028234663852886e38  # cross values are stored as float32: a larger one would become inf


CrossValue = Annotated[float, BeforeValidator(_number_only),
                       Field(allow_inf_nan=False, ge=-FLOAT32_MAX, le=FLOAT32_MAX,
                             description="Finite number that fits a float32.")]


def _event_id_bytes(v: str) -> str:
    try:
        n = len(v.encode("utf-8"))
    except UnicodeEncodeError:  # JSON admits lone surrogates ("\ud800"); UTF-8 and Redis do not
        raise ValueError("String should be valid Unicode (no lone surrogates)") from None
    if n > MAX_EVENT_ID_BYTES:
        raise ValueError(f"String should have at most {MAX_EVENT_ID_BYTES} bytes in UTF-8")
    return v


EventId = Annotated[str, AfterValidator(_event_id_bytes),
                    Field(min_length=1, max_length=MAX_EVENT_ID_BYTES,
                          description=f"Idempotency key, at most {MAX_EVENT_ID_BYTES} bytes in UTF-8: "
                                      "a replay is stored once.")]
FeatureName = Annotated[str, Field(min_length=1, max_length=64)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Candidate(_Strict):
    item_id: Id
    features: dict[FeatureName, FeatureValue] | None = Field(
        None,
        max_length=64,
        description="Inherent features of the item by name (the active model's schema, GET /v1/models). "
        "They override the catalog; an item missing from the catalog needs them.",
    )


class Context(_Strict):
    ts: TimeMs | None = Field(None, description="Request time (ms); defaults to now.")


class ScoreRequest(_Strict):
    user_id: Id
    candidates: list[Candidate] = Field(min_length=1, description="Items to score, at most max_candidates.")
    context: Context | None = None
    explain: StrictBool = Field(False, description="Return the behaviors CP-GSU selected per candidate.")


class Timings(BaseModel):
    queue: float = Field(description="Waiting for the inference thread.")
    fetch: float = Field(description="Redis reads: behaviors, catalog rows, projections.")
    gsu: float = Field(description="Padding, host->device copies and CP-GSU (alpha over L, top-k).")
    esu: float = Field(description="ESU attention over the k selected, short-term module and tower.")
    total: float = Field(description="Handler start to response body.")


class SelectedBehavior(BaseModel):
    position: int = Field(description="Index in the user's newest-first behavior sequence.")
    item_id: int
    ts: int
    weight: list[float] = Field(description="ESU softmax weight per head.")
    alpha_proj: list[float] = Field(description="Projection term of alpha per head.")
    alpha_bias: list[float] = Field(description="Cross-feature bias term of alpha per head.")


class CandidateExplain(BaseModel):
    item_id: int
    selected: list[SelectedBehavior]


class ScoreResponse(BaseModel):
    model_version: str
    scores: list[float] = Field(description="One CTR per candidate, in request order.")
    degraded: bool
    degraded_reasons: list[str]
    timings_ms: Timings
    explain: list[CandidateExplain] | None = None


class EventIn(_Strict):
    event_id: EventId
    user_id: Id
    item_id: Id
    ts: TimeMs
    cross: dict[FeatureName, CrossValue] = Field(
        default_factory=dict, max_length=64,
        description="Stored cross features by name (active model's schema); a missing one is stored as 0.",
    )


class EventsRequest(_Strict):
    events: list[EventIn] = Field(min_length=1, description="At most max_events.")


class EventsResponse(BaseModel):
    accepted: int = Field(description="Events durably stored (replays included).")
    new: int = Field(description="Of those, events not seen before (by event_id).")


class ModelInfo(BaseModel):
    version: str
    created_at: datetime
    metrics: dict[str, Any]
    parent: str | None = None


class BrokenVersion(BaseModel):
    version: str = Field(description="Name of the version's folder in the registry.")
    reason: str = Field(description="Why it cannot be loaded (activating it answers 409).")


class ModelsResponse(BaseModel):
    active: str | None = Field(description="Version the registry marks active.")
    serving: str | None = Field(description="Version this process serves new requests with.")
    features: list[str] = Field(description="Candidate feature names of the serving model.")
    cross: list[str] = Field(description="Event cross feature names of the serving model.")
    versions: list[ModelInfo]
    broken: list[BrokenVersion] = Field(default_factory=list, description="Published versions that fail the "
                                        "registry's checks (bad manifest, missing or resized weights).")


class ActiveResponse(BaseModel):
    active: str


class ReadyResponse(BaseModel):
    ready: bool
    reasons: list[str]
    model_version: str | None = None
