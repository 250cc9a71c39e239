"""Model versions for the activation and broken-artifact scenarios, published into the stack's registry."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from model_store.artifact import MANIFEST_FILE, WEIGHTS_FILE
from model_store.registry import ModelRegistry
from twin.model import TwinCTR


def _active_model(root: Path) -> tuple[ModelRegistry, TwinCTR]:
    reg = ModelRegistry(root)
    model, _ = reg.load(reg.active())
    return reg, model


def perturbed_copy(root: Path, seed: int = 0, scale: float = 0.05) -> str:
    """The active model with every weight nudged: a distinguishable version with no projections yet."""
    reg, model = _active_model(root)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * (p.std() if p.numel() > 1 else 1.0))
    return reg.publish(model, metrics={}, data_fingerprint="faults", notes="faults: perturbed copy")


def broken_versions(root: Path) -> dict[str, str]:
    """Three versions that must be refused: corrupt weights, a malformed manifest, another schema."""
    reg, model = _active_model(root)
    out = {}
    v = out["corrupt weights"] = reg.publish(model, metrics={}, data_fingerprint="faults", notes="faults: corrupt")
    w = reg.versions_dir / v / WEIGHTS_FILE
    data = bytearray(w.read_bytes())
    data[-100] ^= 0x01
    w.write_bytes(bytes(data))
    v = out["bad manifest"] = reg.publish(model, metrics={}, data_fingerprint="faults", notes="faults: bad manifest")
    m = reg.versions_dir / v / MANIFEST_FILE
    doc = json.loads(m.read_text())
    doc["config"]["schema"] = "garbage"
    m.write_text(json.dumps(doc))
    cfg = model.cfg
    other = dataclasses.replace(cfg, schema=dataclasses.replace(cfg.schema, inherent=cfg.schema.inherent[:-1]))
    out["wrong schema"] = reg.publish(TwinCTR(other), metrics={}, data_fingerprint="faults", notes="faults: schema")
    return out


def remove_version(stack, version: str) -> None:
    """Delete a version the scenario published, from the registry and its projections from Redis."""
    import asyncio

    from cache.connection import open_redis
    from cache.layout import Keys
    from cache.projection_store import delete_version

    remove(stack.models, [version])

    async def gc() -> None:
        h = await open_redis(stack.env["REDIS_URL"])
        try:
            await delete_version(h.client, Keys(), version)
        finally:
            await h.aclose()

    asyncio.run(gc())


def remove(root: Path, versions: list[str]) -> None:
    reg = ModelRegistry(root)
    for v in versions:
        if v != reg.active():
            reg.delete(v)
