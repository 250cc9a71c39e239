"""Shared helpers for the model_store tests (no tests here)."""
from __future__ import annotations

from pathlib import Path

import torch

from model_store.artifact import WEIGHTS_FILE
from training.schemas import synthetic_schema
from twin.config import TwinConfig
from twin.model import TwinCTR


def small_config(**overrides: object) -> TwinConfig:
    schema = synthetic_schema(n_items=300, n_authors=40, n_categories=12, id_dim=16)
    kw: dict = dict(schema=schema, n_heads=4, d_k=8, d_v=8, top_k=8, max_len=64, short_len=8, d_out=16,
                    mlp_dims=(32, 16))
    kw.update(overrides)
    return TwinConfig(**kw)


def make_model(seed: int = 0, **overrides: object) -> TwinCTR:
    torch.manual_seed(seed)
    return TwinCTR(small_config(**overrides))


def flip_byte(path: Path, offset_from_end: int = 100) -> None:
    """Corrupt one bit inside the tensor data (not the header) of a file."""
    data = bytearray(path.read_bytes())
    data[len(data) - offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


def weights_path(root: Path, version: str) -> Path:
    return root / "versions" / version / WEIGHTS_FILE
