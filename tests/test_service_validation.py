"""Bad input gets a 4xx naming the field, never a 500; admin endpoints need the token."""
from __future__ import annotations

import pytest

from tests.service_world import ADMIN, NOW_MS, World, running, world  # noqa: F401

OK_CAND = [{"item_id": 1}]


def score(**over) -> dict:
    return {"user_id": 1, "candidates": OK_CAND, **over}


def event(**over) -> dict:
    return {"event_id": "e1", "user_id": 1, "item_id": 2, "ts": NOW_MS, "cross": {"play_ratio": 0.5}, **over}


SCORE_CASES = [
    (score(user_id="7"), ["body", "user_id"]),
    (score(user_id=-1), ["body", "user_id"]),
    (score(user_id=2**63), ["body", "user_id"]),
    (score(user_id=1.5), ["body", "user_id"]),
    (score(user_id=True), ["body", "user_id"]),
    ({"candidates": OK_CAND}, ["body", "user_id"]),
    (score(candidates=[]), ["body", "candidates"]),
    (score(candidates=[{"item_id": i} for i in range(65)]), ["body", "candidates"]),  # max_candidates = 64
    (score(candidates="1,2"), ["body", "candidates"]),
    (score(candidates=[{}]), ["body", "candidates", 0, "item_id"]),
    (score(candidates=[{"item_id": 1}, {"item_id": -3}]), ["body", "candidates", 1, "item_id"]),
    (score(candidates=[{"item_id": 1, "features": {"colour": 3}}]), ["body", "candidates", 0, "features", "colour"]),
    (score(candidates=[{"item_id": 1, "features": {"author_id": 1.5}}]),
     ["body", "candidates", 0, "features", "author_id"]),
    (score(candidates=[{"item_id": 1, "price": 3}]), ["body", "candidates", 0, "price"]),
    (score(context={"ts": -5}), ["body", "context", "ts"]),
    (score(explain="yes"), ["body", "explain"]),
    (score(extra_field=1), ["body", "extra_field"]),
]


@pytest.mark.parametrize("payload,loc", SCORE_CASES, ids=[str(i) for i in range(len(SCORE_CASES))])
async def test_invalid_score_request_is_422_naming_the_field(world: World, payload, loc):
    async with running(world.settings) as (_, client):
        r = await client.post("/v1/score", json=payload)
    assert r.status_code == 422, r.text
    assert loc in [d["loc"] for d in r.json()["detail"]], r.json()


EVENT_CASES = [
    ({"events": []}, ["body", "events"]),
    ({"events": [event()] * 51}, ["body", "events"]),  # max_events = 50
    ({"events": [event(event_id="")]}, ["body", "events", 0, "event_id"]),
    ({"events": [event(), event(item_id=2**64)]}, ["body", "events", 1, "item_id"]),
    ({"events": [event(ts="yesterday")]}, ["body", "events", 0, "ts"]),
    ({"events": [event(cross={"play_ratio": "high"})]}, ["body", "events", 0, "cross", "play_ratio"]),
    ({"events": [event(cross={"mood": 1.0})]}, ["body", "events", 0, "cross", "mood"]),
]


@pytest.mark.parametrize("payload,loc", EVENT_CASES, ids=[str(i) for i in range(len(EVENT_CASES))])
async def test_invalid_events_are_422_naming_the_field(world: World, payload, loc):
    async with running(world.settings) as (_, client):
        r = await client.post("/v1/events", json=payload)
    assert r.status_code == 422, r.text
    assert loc in [d["loc"] for d in r.json()["detail"]], r.json()


RAW_CASES = [
    (b'{"user_id": 1, "candidates": [', "/v1/score", ["body", 30]),                     # truncated JSON
    (b'{"user_id": 1, "candidates": [{"item_id": NaN}]}', "/v1/score", ["body", "candidates", 0, "item_id"]),
    (b'{"events": [{"event_id": "a", "user_id": 1, "item_id": 2, "ts": 5, "cross": {"play_ratio": NaN}}]}',
     "/v1/events", ["body", "events", 0, "cross", "play_ratio"]),
    (b'{"events": [{"event_id": "a", "user_id": 1, "item_id": 2, "ts": 5, "cross": {"liked": Infinity}}]}',
     "/v1/events", ["body", "events", 0, "cross", "liked"]),
    (b'[1, 2, 3]', "/v1/score", ["body"]),
    # a lone surrogate is valid JSON but not UTF-8: refused naming the field (pydantic's loc goes on with
    # the key, replaced, and "[key]"), and rendered without a 500
    (b'{"user_id": 1, "candidates": [{"item_id": 1, "features": {"\\ud800": 3}}]}', "/v1/score",
     ["body", "candidates", 0, "features"]),
]


@pytest.mark.parametrize("raw,path,loc", RAW_CASES, ids=[str(i) for i in range(len(RAW_CASES))])
async def test_malformed_json_and_non_finite_numbers_are_422(world: World, raw, path, loc):
    async with running(world.settings) as (_, client):
        r = await client.post(path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert loc in [d["loc"][:len(loc)] for d in r.json()["detail"]], r.json()


async def test_pathological_bodies_are_4xx_not_500(world: World):
    async with running(world.settings) as (_, client):
        digits = await client.post("/v1/score", content=b'{"user_id": ' + b"9" * 5000 + b"}",
                                   headers={"content-type": "application/json"})
        deep = await client.post("/v1/score", content=b"[" * 5000 + b"]" * 5000,
                                 headers={"content-type": "application/json"})
        deadline = await client.post("/v1/score", json=score(), headers={"X-Deadline-Ms": "soon"})
    assert 400 <= digits.status_code < 500 and 400 <= deep.status_code < 500
    assert deadline.status_code == 422 and deadline.json()["detail"][0]["loc"] == ["header", "x-deadline-ms"]


async def test_huge_body_is_413_with_or_without_content_length(world: World):
    big = b'{"user_id": 1, "candidates": [' + b'{"item_id": 1},' * 6000 + b'{"item_id": 1}]}'  # ~90 KB > 64 KiB
    assert len(big) > world.settings.max_body_bytes

    async def chunks():
        for i in range(0, len(big), 4096):
            yield big[i:i + 4096]

    async with running(world.settings) as (app, client):
        declared = await client.post("/v1/score", content=big, headers={"content-type": "application/json"})
        streamed = await client.post("/v1/score", content=chunks(), headers={"content-type": "application/json"})
        ok = await client.post("/v1/score", json=score())
        metrics = (await client.get("/metrics")).text
    assert declared.status_code == 413 and streamed.status_code == 413
    assert ok.status_code == 200
    assert 'twin_requests_total{code="413",endpoint="/v1/score"} 2.0' in metrics


@pytest.mark.parametrize("headers,code", [({}, 401), ({"Authorization": "Bearer wrong"}, 403),
                                          ({"Authorization": "Basic czNjcmV0"}, 401)])
async def test_admin_endpoints_need_the_bearer_token(world: World, headers, code):
    version = world.registry.active()
    async with running(world.settings) as (_, client):
        act = await client.post(f"/v1/models/{version}/activate", headers=headers)
        rb = await client.post("/v1/models/rollback", headers=headers)
        good = await client.post(f"/v1/models/{version}/activate", headers={"Authorization": f"Bearer {ADMIN}"})
    assert act.status_code == code and rb.status_code == code
    assert good.status_code == 200 and good.json() == {"active": version}


async def test_openapi_documents_the_limits(world: World):
    async with running(world.settings) as (_, client):
        doc = (await client.get("/openapi.json")).json()
    req = doc["components"]["schemas"]["ScoreRequest"]
    assert req["properties"]["candidates"]["maxItems"] == 64 and req["properties"]["candidates"]["minItems"] == 1
    assert doc["components"]["schemas"]["EventsRequest"]["properties"]["events"]["maxItems"] == 50
    assert {"/v1/score", "/v1/events", "/v1/models", "/v1/models/{version}/activate", "/v1/models/rollback",
            "/health/live", "/health/ready", "/metrics"} <= set(doc["paths"])
