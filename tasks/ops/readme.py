"""README's generated part: the configuration table, made from celeryconfig's
declarations (`python -m tasks config --write-readme`, `make docs`), so it cannot drift."""

from __future__ import annotations

from pathlib import Path

import celeryconfig

README = Path(__file__).resolve().parents[2] / "README.md"
TABLE_BEGIN, TABLE_END = "<!-- settings:begin -->", "<!-- settings:end -->"


def write_settings_table(readme: Path = README) -> None:
    head, found, rest = readme.read_text().partition(TABLE_BEGIN)
    if not found:
        raise SystemExit(f"{readme} has no {TABLE_BEGIN} marker")
    tail = rest.partition(TABLE_END)[2]
    readme.write_text(f"{head}{TABLE_BEGIN}\n{celeryconfig.settings_table()}\n{TABLE_END}{tail}")
