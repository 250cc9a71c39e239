"""The trainer learns, stops early on validation, keeps its best state, compares variants and publishes."""
import numpy as np
import pytest
import torch

from training import cli
from training.dataset import load_dataset
from training.metrics import auc
from training.synthetic import generate, preset
from training.trainer import TrainSettings, predict, run_comparison, variant_data

ARCH = {"d_k": 8, "d_v": 8, "d_out": 16, "mlp_dims": (32,), "top_k": 20, "short_len": 10}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    generate(preset("tiny"), out, progress=False)
    return out


def test_twin_learns_stops_early_and_keeps_its_best_validation_state(tmp_path):
    torch.set_num_threads(2)
    generate(preset("tiny", n_users=150, hist_median=100, hist_cap=200), tmp_path, progress=False)
    data = load_dataset(tmp_path)
    st = TrainSettings(epochs=30, batch_size=96, lr=1e-2, warmup_steps=5, max_len=120, evals_per_epoch=1,
                       patience=2, progress=False, consistency_requests=8, arch=ARCH)
    [r] = run_comparison(data, ("twin",), st)
    assert r.test["early_stopped"] == 1.0 and r.history[-1]["epoch"] < 30, r.history  # stopped before the cap
    # the last `patience` validations did not beat the best, and each one halved the rate
    best = max(h["val_auc"] for h in r.history)
    assert all(h["val_auc"] <= best for h in r.history[-2:]) and r.history[-1]["lr"] < st.lr
    assert r.best_val_auc == pytest.approx(best)
    # the model handed back is the best validated state (then only its never-trained embedding rows
    # were filled, which moves the validation AUC a little), not the last
    s = data.split("val")
    assert auc(s.label, predict(r.model, data, "val", st)) == pytest.approx(r.best_val_auc, abs=0.01)
    assert r.test["auc"] > 0.58 and r.test["gauc"] > 0.55 and np.isfinite(r.test["logloss"])
    assert 0 < r.test["consistency_sum"] <= ARCH["top_k"] and 0 < r.test["consistency_per_head"] <= ARCH["top_k"]


def test_the_item_stats_ablation_drops_only_those_features(tiny_dir):
    data = load_dataset(tiny_dir)
    d = variant_data(data, "no_item_stats")
    assert "views" in data.schema.inherent_names and "views" not in d.schema.inherent_names
    assert d.item_raw.shape == (data.item_raw.shape[0], data.item_raw.shape[1] - 1)
    assert variant_data(data, "twin") is data


def test_cli_trains_variants_reports_references_and_publishes(tiny_dir, tmp_path, capsys):
    reg, report = tmp_path / "registry", tmp_path / "report.md"
    rc = cli.main(["train", "--data", str(tiny_dir), "--out-registry", str(reg), "--report", str(report),
                   "--variants", "twin,recent", "--epochs", "1", "--max-len", "120", "--no-progress",
                   "--arch", '{"d_k": 8, "d_v": 8, "d_out": 16, "mlp_dims": [16], "top_k": 20}'])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| twin |" in out and "| recent |" in out and "published twin as version" in out
    assert "oracle (noiseless logit, ceiling)" in out and "LR match counts (full history)" in out
    text = report.read_text()
    assert "| recent |" in text and "Validation curves" in text
    assert (tmp_path / "report.curves.png").stat().st_size > 1000
    from model_store.registry import ModelRegistry

    [m] = ModelRegistry(reg).list()
    assert "test_auc" in m.metrics and "recent_test_auc" in m.metrics
    assert any(k.startswith("ref oracle") for k in m.metrics)
    model, _ = ModelRegistry(reg).load(m.version)
    assert model.cfg.gsu == "twin" and model.cfg.top_k == 20 and model.cfg.full_lse
