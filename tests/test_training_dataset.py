"""TrainBatch assembly from a hand-written data directory."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from training.dataset import load_dataset
from training.schemas import synthetic_schema


@pytest.fixture()
def data_dir(tmp_path):
    schema = synthetic_schema(n_items=100, n_authors=10, n_categories=5)
    (tmp_path / "schema.json").write_text(json.dumps({**schema.to_dict(), "meta": {"source": "test"}}))
    items = np.arange(1, 11)
    pq.write_table(pa.table({"item_id": items, "author_id": items % 3, "category": items % 4,
                             "duration_s": items * 10, "views": items * 100}), tmp_path / "items.parquet")
    # user 5: items 1..6 at ts 1000..6000; user 9: items 7, 8 at ts 100, 200
    beh = {"user_id": [5] * 6 + [9] * 2, "item_id": [1, 2, 3, 4, 5, 6, 7, 8],
           "ts": [1000, 2000, 3000, 4000, 5000, 6000, 100, 200],
           "play_ratio": np.arange(8, dtype=np.float32) / 10, "liked": np.array([0, 1] * 4, np.float32)}
    pq.write_table(pa.table(beh), tmp_path / "behaviors.parquet")
    # user 5's two test samples share one request (same ts and history): one sequence, two targets
    smp = {"user_id": [5, 9, 5, 9, 5], "item_id": [10, 9, 2, 1, 3], "ts": [4500, 300, 7000, 150, 7000],
           "label": np.array([1, 0, 0, 1, 1], np.int8), "hist_len": [4, 2, 6, 1, 6],
           "split": ["train", "train", "test", "val", "test"]}
    pq.write_table(pa.table(smp), tmp_path / "samples.parquet")
    return tmp_path


def test_batch_is_newest_first_truncated_padded_and_masked(data_dir):
    d = load_dataset(data_dir)
    b, idx = next(d.batches("train", batch_size=2, max_len=3))
    # sample 0 (user 5, hist_len 4, max_len 3): behaviors 4, 3, 2 newest first; sample 1: 8, 7, pad
    assert b.seq_items[:, :, 0].tolist() == [[4, 3, 2], [8, 7, 0]]
    assert b.seq_mask.tolist() == [[True, True, True], [True, True, False]]
    assert b.seq_ts.tolist() == [[4000, 3000, 2000], [200, 100, 0]]
    # cross values travel with their behavior: play_ratio of behavior rows 3, 2, 1 and 7, 6
    assert b.seq_cross[0, :, 0].tolist() == pytest.approx([0.3, 0.2, 0.1])
    assert b.seq_cross[1, :2, 0].tolist() == pytest.approx([0.7, 0.6])
    assert b.seq_cross[1, 2].tolist() == [0.0, 0.0]
    # inherent features in schema order: item_id, author_id, category, duration_s
    assert b.seq_items[0, 0].tolist() == [4, 1, 0, 40, 400]
    assert b.target.tolist() == [[[10, 1, 2, 100, 1000]], [[9, 0, 1, 90, 900]]]  # [B, C=1, F_h]
    assert b.hist_len.tolist() == [4, 2]  # full history length, not the truncated one
    assert b.now.tolist() == [4500, 300]
    assert b.label.tolist() == [[1.0], [0.0]]
    assert idx.tolist() == [[0], [1]]  # rows of the split's samples
    assert b.seq_items.dtype == torch.int64 and b.seq_cross.dtype == torch.float32
    assert b.seq_mask.dtype == torch.bool


def test_history_is_exactly_the_visible_prefix(data_dir):
    d = load_dataset(data_dir)
    b, idx = next(d.batches("test", batch_size=4, max_len=100))
    assert b.seq_items.shape[1] == 6  # dynamic L: the longest visible history, not max_len
    assert b.seq_items[0, :, 0].tolist() == [6, 5, 4, 3, 2, 1]
    v, _ = next(d.batches("val", batch_size=4, max_len=100))
    assert v.seq_items[0, :, 0].tolist() == [7] and v.seq_mask.tolist() == [[True]]


def test_samples_of_one_request_share_one_sequence(data_dir):
    d = load_dataset(data_dir)
    b, idx = next(d.batches("test", batch_size=4, max_len=100))
    assert b.seq_items.shape[0] == 1 and b.target.shape[:2] == (1, 2)  # one request, two targets
    assert b.target[0, :, 0].tolist() == [2, 3] and b.label.tolist() == [[0.0, 1.0]]
    assert b.target_mask.tolist() == [[True, True]] and idx.tolist() == [[0, 1]]
    # a request wider than max_targets is cut into several, each with the full sequence
    b1, idx1 = next(d.batches("test", batch_size=1, max_len=100, max_targets=1))
    assert b1.target.shape[:2] == (1, 1) and b1.seq_items.shape[1] == 6


def test_padded_targets_are_masked(tmp_path):
    from training.synthetic import generate, preset

    generate(preset("tiny", n_users=20, samples_per_user=5), tmp_path, progress=False)
    d = load_dataset(tmp_path)
    for b, idx in d.batches("train", batch_size=12, max_len=50, max_targets=3):  # requests of 3 and 2
        assert (b.target_mask.numpy() == (idx >= 0)).all()
        assert (b.label[~b.target_mask] == 0).all() and (b.target[~b.target_mask] == 0).all()


def test_shuffle_is_seeded_and_covers_every_sample_once(tmp_path):
    from training.synthetic import generate, preset

    generate(preset("tiny", n_users=60), tmp_path, progress=False)
    d = load_dataset(tmp_path)

    def order(seed, bucket):
        return [idx[idx >= 0].tolist() for _, idx in d.batches("train", 32, 50, shuffle=True, seed=seed,
                                                                bucket=bucket, max_targets=8)]

    a, a2, c = order(1, 0), order(1, 0), order(2, 0)
    assert a == a2 and a != c
    every = list(range(len(d.split("train"))))
    assert sorted(x for batch in a for x in batch) == every
    assert sorted(x for batch in order(1, 3) for x in batch) == every


def test_unsorted_behaviors_are_refused(data_dir):
    t = pq.read_table(data_dir / "behaviors.parquet").to_pydict()
    t["ts"][0], t["ts"][1] = t["ts"][1], t["ts"][0]
    pq.write_table(pa.table(t), data_dir / "behaviors.parquet")
    with pytest.raises(ValueError, match="not sorted"):
        load_dataset(data_dir)
