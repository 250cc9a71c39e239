"""Broken or mismatched artifacts through the API: refused with 409, listed as broken, the active
model keeps serving, and nothing answers 500."""
from __future__ import annotations

import dataclasses
import json

from model_store.artifact import MANIFEST_FILE
from tests.service_world import ADMIN, NOW_MS, World, running, world  # noqa: F401
from tests.twin_factory import tiny_config, tiny_model

AUTH = {"Authorization": f"Bearer {ADMIN}"}
REQ = {"user_id": 2, "candidates": [{"item_id": 5}], "context": {"ts": NOW_MS}}


async def test_a_manifest_with_a_malformed_schema_is_refused_and_listed_as_broken(world: World):
    v1 = world.registry.active()
    bad = world.publish(seed=1)
    path = world.registry.versions_dir / bad / MANIFEST_FILE
    doc = json.loads(path.read_text())
    doc["config"]["schema"] = "garbage"
    path.write_text(json.dumps(doc))
    async with running(world.settings) as (_, client):
        act = await client.post(f"/v1/models/{bad}/activate", headers=AUTH)
        listing = await client.get("/v1/models")
        again = await client.get("/v1/models")
        score = await client.post("/v1/score", json=REQ)
    assert act.status_code == 409 and act.json()["reason"] == "artifact_refused" and bad in act.json()["detail"]
    assert listing.status_code == again.status_code == 200, listing.text
    body = listing.json()
    assert [v["version"] for v in body["versions"]] == [v1]
    assert [b["version"] for b in body["broken"]] == [bad] and "config" in body["broken"][0]["reason"]
    assert str(world.registry.root) not in listing.text  # server paths stay out of the answer
    assert score.status_code == 200 and score.json()["model_version"] == v1
    assert world.registry.active() == v1


async def test_a_model_of_another_feature_schema_is_refused_before_the_switch(world: World):
    v1 = world.registry.active()
    cfg = tiny_config()
    schema = dataclasses.replace(cfg.schema, inherent=cfg.schema.inherent[:3])  # no duration_s, views: rows of 3
    other = world.registry.publish(tiny_model(seed=4, schema=schema), metrics={}, data_fingerprint="other-schema")
    async with running(world.settings) as (_, client):
        act = await client.post(f"/v1/models/{other}/activate", headers=AUTH)
        score = await client.post("/v1/score", json=REQ)
        ready = await client.get("/health/ready")
    assert act.status_code == 409 and act.json()["reason"] == "schema_mismatch", act.text
    assert "duration_s" not in act.json()["detail"] and "holds rows of 5" in act.json()["detail"]
    assert score.status_code == 200 and score.json()["model_version"] == v1 and not score.json()["degraded"]
    assert ready.status_code == 200 and world.registry.active() == v1
