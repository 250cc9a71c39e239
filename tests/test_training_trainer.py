"""The trainer learns, keeps its best state, compares variants and publishes through the CLI."""
import numpy as np
import pytest
import torch

from training import cli
from training.dataset import load_dataset
from training.synthetic import generate, preset
from training.trainer import TrainSettings, markdown_table, predict, run_comparison
from training.metrics import auc

ARCH = {"d_k": 8, "d_v": 8, "d_out": 16, "mlp_dims": (32,), "top_k": 20, "short_len": 10}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    generate(preset("tiny"), out, progress=False)
    return out


def test_twin_learns_and_keeps_its_best_validation_state(tiny_dir):
    torch.set_num_threads(2)
    data = load_dataset(tiny_dir)
    st = TrainSettings(epochs=3, batch_size=128, lr=3e-3, max_len=150, evals_per_epoch=2, patience=3,
                       progress=False, consistency_samples=200, arch=ARCH)
    [r] = run_comparison(data, ("twin",), st)
    assert r.best_val_auc > 0.65, r.history
    # the model handed back is the best validated one, not the last
    s = data.split("val")
    assert auc(s.label, predict(r.model, data, "val", 512, 150)) == pytest.approx(r.best_val_auc, abs=1e-6)
    assert r.test["auc"] > 0.62 and r.test["gauc"] > 0.55 and np.isfinite(r.test["logloss"])
    assert 0 < r.test["consistency"] <= ARCH["top_k"]
    assert "| twin |" in markdown_table([r])


def test_cli_trains_variants_reports_and_publishes(tiny_dir, tmp_path, capsys):
    reg, report = tmp_path / "registry", tmp_path / "report.md"
    rc = cli.main(["train", "--data", str(tiny_dir), "--out-registry", str(reg), "--report", str(report),
                   "--variants", "twin,recent", "--epochs", "1", "--max-len", "120", "--no-progress",
                   "--arch", '{"d_k": 8, "d_v": 8, "d_out": 16, "mlp_dims": [16], "top_k": 20}'])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| twin |" in out and "| recent |" in out and "published twin as version" in out
    assert "| recent |" in report.read_text()
    from model_store.registry import ModelRegistry

    [m] = ModelRegistry(reg).list()
    assert "test_auc" in m.metrics and "recent_test_auc" in m.metrics
    model, _ = ModelRegistry(reg).load(m.version)
    assert model.cfg.gsu == "twin" and model.cfg.top_k == 20
