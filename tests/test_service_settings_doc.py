"""docs/service.md's settings table is the settings class, field by field: one row per field, in
the class's order, whose variable, type and default cells are what `Settings` declares (the
meaning column is prose; it must not be empty). A field added, removed, retyped or re-defaulted
without its row fails here, with the row to write."""
from __future__ import annotations

import re
import types
import typing
from pathlib import Path

from pydantic import SecretStr

from service.settings import Settings

DOC = Path(__file__).resolve().parents[1] / "docs" / "service.md"
SECTION = "## Settings"


def env_names(name: str) -> str:
    field = Settings.model_fields[name]
    alias = field.validation_alias
    if alias is not None:  # AliasChoices("TWIN_REDIS_URL", "REDIS_URL"): the short one first
        return " / ".join(f"`{a}`" for a in sorted(alias.choices, key=len))
    return f"`{Settings.model_config['env_prefix']}{name.upper()}`"


def type_cell(annotation: object) -> str:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return type_cell(args[0])  # optional: the default cell says "unset"
    if origin is typing.Literal:
        return " / ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin is list:
        return f"list[{type_cell(args[0])}] (JSON)"
    return {Path: "path", SecretStr: "secret"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


def default_cell(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def expected_rows() -> list[tuple[str, str, str]]:
    return [(env_names(n), type_cell(f.annotation), default_cell(f.default)) for n, f in Settings.model_fields.items()]


def doc_rows() -> list[list[str]]:
    text = DOC.read_text()
    section = text[text.index(SECTION):]
    section = section[:section.find("\n## ", 1)]
    rows = [ln for ln in section.splitlines() if ln.startswith("| `")]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]] for ln in rows]


def test_the_settings_table_is_the_settings_class_field_by_field():
    rows = doc_rows()
    want = expected_rows()
    assert [r[0] for r in rows] == [w[0] for w in want], "variables differ from Settings' fields (order included)"
    for row, (var, typ, default) in zip(rows, want):
        assert len(row) == 4, f"{var}: expected | variable | type | default | meaning |, got {row}"
        assert (row[1], row[2]) == (typ, default), f"{var}: write | {var} | {typ} | {default} | ... |"
        assert row[3], f"{var}: the meaning column is empty"


def test_the_renderers_follow_the_declarations():
    # the check can fail: a changed default or type renders differently
    assert default_cell(150.0) == "`150`" and default_cell(None) == "unset" and default_cell(True) == "`true`"
    assert type_cell(int | None) == "int" and type_cell(typing.Literal["a", "b"]) == "`a` / `b`"
    assert type_cell(list[int] | None) == "list[int] (JSON)" and type_cell(SecretStr | None) == "secret"
