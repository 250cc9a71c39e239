"""`python -m training.cli generate --if-changed`: `make train` regenerates a data set exactly when
its recorded family and config differ from what it asks for (a preset changed, another family)."""
from __future__ import annotations

from training.cli import main


def test_generate_if_changed_skips_only_the_same_family_and_config(tmp_path, capsys):
    out = str(tmp_path / "d")
    assert main(["generate", "--preset", "tiny", "--users", "30", "--out", out]) == 0
    stamp = (tmp_path / "d" / "samples.parquet").stat().st_mtime_ns
    assert main(["generate", "--if-changed", "--preset", "tiny", "--users", "30", "--out", out]) == 0
    assert "not generated again" in capsys.readouterr().out
    assert (tmp_path / "d" / "samples.parquet").stat().st_mtime_ns == stamp
    for other in (["--users", "31"], ["--users", "30", "--family", "topics"], ["--users", "30", "--seed", "1"]):
        assert main(["generate", "--if-changed", "--preset", "tiny", *other, "--out", out]) == 0
        assert "not generated again" not in capsys.readouterr().out
