"""The OpenAPI document tells the truth, as a schema-driven client reads it: every status a route can
give is listed, integer bounds are exact integers whose float64 reading still validates, and no
parameter offers a value (null) the service refuses."""
from __future__ import annotations

import json
import math

from tests.service_world import NOW_MS, World, running, world  # noqa: F401


def walk(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield path + (k,), k, v
            yield from walk(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, path + (i,))


async def test_every_body_route_documents_400_408_413_and_a_400_is_real(world: World):
    async with running(world.settings) as (_, client):
        doc = (await client.get("/openapi.json")).json()
        huge = b'{"user_id": ' + b"7" * 5000 + b', "candidates": [{"item_id": 1}]}'  # > 4300 digits
        r = await client.post("/v1/score", content=huge, headers={"content-type": "application/json"})
    for path in ("/v1/score", "/v1/events"):
        assert {"400", "408", "413", "422", "503"} <= set(doc["paths"][path]["post"]["responses"]), path
    assert r.status_code == 400, r.text


async def test_integer_bounds_are_exact_and_their_float64_reading_validates(world: World):
    async with running(world.settings) as (_, client):
        raw = (await client.get("/openapi.json")).text
        doc = json.loads(raw, parse_int=float)  # the document as a float64 JSON reader (JavaScript) sees it
        user = doc["components"]["schemas"]["ScoreRequest"]["properties"]["user_id"]
        ts = next(b for b in doc["components"]["schemas"]["Context"]["properties"]["ts"]["anyOf"]
                  if b.get("type") == "integer")
        picks = []
        for schema in (user, ts):  # the largest value such a client would send
            if "exclusiveMaximum" in schema:
                picks.append(int(math.nextafter(schema["exclusiveMaximum"], 0)))
            else:
                picks.append(int(schema["maximum"]))
        r = await client.post("/v1/score", json={"user_id": picks[0], "candidates": [{"item_id": 1}],
                                                 "context": {"ts": picks[1]}})
    assert r.status_code == 200, (picks, r.text)
    assert "e+18" not in raw  # bounds are written as integers
    exact = json.loads(raw)["components"]["schemas"]["ScoreRequest"]["properties"]["user_id"]
    assert exact["exclusiveMaximum"] == 2**63 and exact["minimum"] == 0


async def test_the_deadline_header_offers_no_null_and_its_documented_range_is_accepted(world: World):
    async with running(world.settings) as (_, client):
        doc = (await client.get("/openapi.json")).json()
        header = next(p for p in doc["paths"]["/v1/score"]["post"]["parameters"] if p["name"] == "x-deadline-ms")
        body = {"user_id": 2, "candidates": [{"item_id": 1}], "context": {"ts": NOW_MS}}
        top = await client.post("/v1/score", json=body, headers={"x-deadline-ms": str(header["schema"]["maximum"])})
        bad = await client.post("/v1/score", json=body, headers={"x-deadline-ms": "null"})
    assert "null" not in json.dumps(header["schema"])
    assert top.status_code == 200, top.text
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["header", "x-deadline-ms"]
