"""Every embedding row serving can read is trained, or filled from trained rows after training."""
import torch

from tests.twin_factory import serve_batch_from, tiny_model, train_batch
from training.coverage import RowUsage, fill_unused_rows


def test_unused_rows_are_filled_from_used_ones_and_used_rows_are_kept():
    model = tiny_model()
    usage = RowUsage(model)
    b = train_batch(B=4, lengths=[300, 200, 50, 5])
    usage.record(model, b)
    before = {n: t.weight.clone() for n, t in zip([s.name for s in model.inherent_emb.specs], model.inherent_emb.tables)}
    filled = fill_unused_rows(usage)
    item = model.inherent_emb.tables[0].weight
    used = usage.used["inherent"][0]
    assert filled["inherent.item_id"] == int((~used).sum()) > 0
    assert torch.equal(item[used], before["item_id"][used])  # trained rows untouched
    torch.testing.assert_close(item[~used], before["item_id"][used].mean(0).expand(int((~used).sum()), -1))
    # padding never counts as use: the sequences' padded tail (item 0 features) is not recorded
    b2 = train_batch(B=1, lengths=[3], L=300)
    u2 = RowUsage(model)
    u2.record(model, b2)
    assert int(u2.used["inherent"][0].sum()) <= 3 + b2.target.shape[1]


def test_history_lengths_beyond_training_read_the_longest_trained_bucket():
    """Serving reads up to 10^5 behaviors; the model never trained on more than 300 here. After the
    fill, a 60,000-behavior history gives the same score as the longest trained one."""
    model = tiny_model()
    usage = RowUsage(model)
    for s in range(3):
        usage.record(model, train_batch(B=4, lengths=[300, 120, 40, 9], seed=s))
    hist = usage.used["context"][1]  # the hist_len buckets
    assert not hist[-1] and hist.any()  # the top buckets were never trained
    fill_unused_rows(usage)
    sb = serve_batch_from(model, train_batch(B=1, L=300))
    with torch.no_grad():
        base = model.score(sb).scores
        sb.hist_len = torch.tensor([256])  # the bucket of the longest trained history (300)
        trained = model.score(sb).scores
        sb.hist_len = torch.tensor([60_000])
        long = model.score(sb).scores
    torch.testing.assert_close(long, trained)
    assert torch.equal(base, trained)  # 300 and 256 share a bucket


def test_without_the_fill_a_long_history_reads_an_untrained_row():
    """The failure the fill prevents: the same model unfilled scores the long history differently."""
    model = tiny_model()
    sb = serve_batch_from(model, train_batch(B=1, L=300))
    with torch.no_grad():
        trained = model.score(sb).scores
        sb.hist_len = torch.tensor([60_000])
        long = model.score(sb).scores
    assert not torch.allclose(long, trained)
