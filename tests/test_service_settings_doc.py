"""Every setting is documented: docs/service.md's table names each field's environment variable."""
from __future__ import annotations

from pathlib import Path

from service.settings import Settings

DOC = Path(__file__).resolve().parents[1] / "docs" / "service.md"


def test_every_setting_has_a_row_in_the_settings_table():
    text = DOC.read_text()
    missing = [name for name in Settings.model_fields
               if f"| `TWIN_{name.upper()}` |" not in text and not (name == "redis_url" and "`REDIS_URL`" in text)]
    assert not missing, f"settings without a row in docs/service.md: {missing}"
