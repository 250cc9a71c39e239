"""DIN's mini-batch aware L2: only the id rows a batch reads are pulled, each by lambda * w / n_j."""
import numpy as np
import pytest
import torch

from training.dataset import load_dataset
from training.id_regularization import MiniBatchAwareL2
from training.synthetic import generate, preset
from training.trainer import TrainSettings, make_config
from twin.model import TwinCTR

READ_LEN = 60  # shorter than most tiny histories: the count must stop at the newest READ_LEN


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_reg")
    generate(preset("tiny", n_users=60), out, progress=False)
    return load_dataset(out)


def test_row_counts_are_the_reads_of_training_requests(data):
    model = TwinCTR(make_config(data, "twin", TrainSettings(max_len=READ_LEN)))
    reg = MiniBatchAwareL2(model, data, lam=1.0, read_len=READ_LEN)
    item_col = 0
    train = data.split("train")
    n = np.zeros(model.cfg.schema.inherent[item_col].vocab)
    for u in np.unique(train.user_row):  # brute force: every read of every item by a training request
        lo, hi = data.offsets[u], data.offsets[u + 1]
        for row in data.beh_item_row[max(lo, hi - READ_LEN):hi]:
            n[data.item_raw[row, item_col]] += 1
    for row in train.item_row:
        n[data.item_raw[row, item_col]] += 1
    expect = np.divide(1.0, n, out=np.zeros_like(n), where=n > 0)
    np.testing.assert_allclose(reg.inv_n[item_col].numpy(), expect, rtol=1e-6)
    assert reg.cols == [j for j, s in enumerate(model.cfg.schema.inherent) if not s.boundaries]


def test_only_the_rows_a_batch_reads_get_the_pull(data):
    model = TwinCTR(make_config(data, "twin", TrainSettings(max_len=READ_LEN)))
    reg = MiniBatchAwareL2(model, data, lam=0.5, read_len=READ_LEN)
    b, _ = next(data.batches("train", 64, READ_LEN, max_targets=16))
    table = model.inherent_emb.tables[0].weight  # item ids
    table.grad = torch.zeros_like(table)
    reg.apply(model, b)
    read = torch.unique(torch.cat([b.seq_items[b.seq_mask][:, 0], b.target[b.target_mask][:, 0]]))
    expect = torch.zeros_like(table)
    expect[read] = 0.5 * reg.inv_n[0][read, None] * table.detach()[read]
    torch.testing.assert_close(table.grad, expect)
    assert (expect[read].abs().sum(1) > 0).all()  # every read row was in the training counts
