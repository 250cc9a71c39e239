"""The compiled cross-feature pass (twin.kernels.cpu_cross) against the torch functions it replaces on
the CPU serving path: features.cross_ids + tables.stack_rows, and the masked bias of TwinCTR."""
from __future__ import annotations

import pytest
import torch

from training.schemas import synthetic_schema
from twin.config import FeatureSchema, FeatureSpec
from twin.features import cross_ids
from twin.kernels import cross_rows
from twin.kernels.tables import stack_rows, stack_tables

SYNTHETIC = synthetic_schema(1000, 100, 10)
# hashed (no boundaries) stored value, a hashed age, a bucketized stored value with negative boundaries
MIXED = FeatureSchema(inherent=SYNTHETIC.inherent,
                      cross=(FeatureSpec("h", 7, 8), FeatureSpec("age", 5, 8, source="age_hours"),
                             FeatureSpec("b", 4, 8, boundaries=(-1.0, 0.0, 2.5))))
EDGE_VALUES = [-1.0, 0.0, 2.5, 0.1, 0.99, 1e30, -1e30, -0.0, 1e19, -7.0, 3.9, float("nan"), 3.0e38]
NOW = 1_764_400_000_000


def inputs(schema: FeatureSchema, B: int = 3, L: int = 3000, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    J_s = len(schema.stored_cross_names())
    cross = torch.randn(B, L, J_s, generator=g) * 3
    cross[0, :len(EDGE_VALUES)] = torch.tensor(EDGE_VALUES)[:, None]  # boundaries, NaN, beyond int64
    now = torch.tensor([NOW, NOW // 2, 7])
    ts = now[:, None] - torch.randint(-10**8, 10**11, (B, L), generator=g)  # some from the future
    ts[0, :6] = NOW - torch.tensor([0, 3_600_000, 3_599_999, -5, 7_200_000, 6 * 3_600_000])  # bucket edges
    return cross, ts, now


@pytest.mark.parametrize("schema", [SYNTHETIC, MIXED], ids=["synthetic", "mixed"])
def test_rows_equal_the_stacked_torch_ids(schema):
    cross, ts, now = inputs(schema)
    want = stack_rows(cross_ids(schema, cross, ts, now), [f.vocab for f in schema.cross])
    got, bias = cross_rows(schema, cross, ts, now)
    assert bias is None
    assert got.dtype == torch.int64 and torch.equal(got, want)


def test_bias_equals_the_masked_bias_of_the_torch_path():
    schema = SYNTHETIC
    cross, ts, now = inputs(schema, seed=1)
    g = torch.Generator().manual_seed(2)
    tables = [torch.randn(f.vocab, 4, generator=g) for f in schema.cross]  # J x [V_j, A]
    mask = torch.ones(ts.shape, dtype=torch.bool)
    mask[1, 2000:] = False
    mask[2, ::7] = False  # holes, not only a padded tail
    from twin.model import TwinCTR

    bias = TwinCTR._bias_from_tables(tables, cross_ids(schema, cross, ts, now))  # [B, L, A]
    want = bias.masked_fill(~mask[:, :, None], float("-inf")).permute(0, 2, 1)  # [B, A, L]
    rows, got = cross_rows(schema, cross, ts, now, stack_tables(tables, side_by_side=False), mask)
    assert torch.equal(got, want)  # the same float32 sums in the same order
    assert torch.equal(rows, stack_rows(cross_ids(schema, cross, ts, now), [f.vocab for f in schema.cross]))


def test_a_wrong_age_rule_would_be_caught():
    """The age feature depends on now - ts: shifting now by 30 days moves its rows and no other
    feature's, so the equalities above are not vacuous for the derived feature."""
    cross, ts, now = inputs(SYNTHETIC, seed=3)
    a, _ = cross_rows(SYNTHETIC, cross, ts, now)
    b, _ = cross_rows(SYNTHETIC, cross, ts, now + 30 * 86_400_000)
    assert not torch.equal(a[0], b[0]) and torch.equal(a[1:], b[1:])
