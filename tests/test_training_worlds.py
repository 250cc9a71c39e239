"""Load-test worlds drawn by a data set's own generator (training/worlds.py): exactly L behaviors per
user on the data set's catalog, deterministic, for both generator families."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from training import synthetic, synthetic_topics
from training.worlds import data_config, world_behaviors, write_world

FAMILIES = {"categories": synthetic, "topics": synthetic_topics}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def data_set(request, tmp_path_factory):
    gen = FAMILIES[request.param]
    cfg = gen.preset("tiny", n_users=20, users_per_chunk=20)
    out = tmp_path_factory.mktemp(request.param)
    gen.generate(cfg, out, progress=False)
    return request.param, cfg, out


def test_data_config_reads_back_the_family_and_config_that_generated_the_catalog(data_set):
    name, cfg, out = data_set
    got, family = data_config(out)
    assert got == cfg and family.name == name


def test_a_catalog_that_is_not_the_configs_is_refused(data_set, tmp_path):
    _, cfg, out = data_set
    for f in ("schema.json", "behaviors.parquet"):
        (tmp_path / f).write_bytes((out / f).read_bytes())
    items = pq.read_table(out / "items.parquet")
    pq.write_table(items.set_column(1, "author_id", items.column("author_id").take(np.arange(cfg.n_items)[::-1])),
                   tmp_path / "items.parquet")
    with pytest.raises(ValueError, match="does not match"):
        data_config(tmp_path)


def test_every_user_gets_exactly_L_behaviors_oldest_first_in_chunks(data_set):
    _, cfg, out = data_set
    got, family = data_config(out)
    chunks = list(world_behaviors(got, family, seq_len=300, n_users=5, first_user_id=9_001, chunk_behaviors=600))
    assert [len(c["ts"]) for c in chunks] == [600, 600, 300]  # 2 users a chunk
    users = np.concatenate([c["user_id"] for c in chunks])
    ts = np.concatenate([c["ts"] for c in chunks])
    item = np.concatenate([c["item_id"] for c in chunks])
    assert np.array_equal(np.unique(users), np.arange(9_001, 9_006))
    assert all((users == u).sum() == 300 for u in range(9_001, 9_006))
    assert np.all(np.diff(users) >= 0)
    for u in range(9_001, 9_006):
        assert np.all(np.diff(ts[users == u]) >= 0), "oldest first within a user"
    assert item.min() >= 1 and item.max() <= cfg.n_items
    counts = np.bincount(item)
    assert np.sort(counts)[-20:].sum() > 0.1 * len(item)  # 1% of the items take > 10% of the behaviors


def test_write_world_is_deterministic_and_leaves_no_partial_file(data_set, tmp_path):
    _, _, out = data_set
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    assert write_world(out, a, 200, 3, 7_001) == 600
    write_world(out, b, 200, 3, 7_001)
    assert pq.read_table(a).equals(pq.read_table(b))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet", "b.parquet"]
    with pytest.raises(ValueError, match="seq_len"):
        write_world(out, tmp_path / "c.parquet", 0, 3, 7_001)
