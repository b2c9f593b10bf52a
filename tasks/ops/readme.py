"""README's generated parts, between their markers: the configuration table, made from
celeryconfig's declarations (`python -m tasks config --write-readme`), and the commands
table, made from the command line (tasks/cli/readme.py); `make docs` writes both, and
tests hold README equal to them, so they cannot drift."""

from __future__ import annotations

from pathlib import Path

import celeryconfig

README = Path(__file__).resolve().parents[2] / "README.md"
TABLE_BEGIN, TABLE_END = "<!-- settings:begin -->", "<!-- settings:end -->"


def section(text: str, begin: str, end: str) -> str:
    """What stands between the markers `begin` and `end` in `text`."""
    _, found, rest = text.partition(begin)
    if not found or end not in rest:
        raise SystemExit(f"README has no {begin} ... {end} markers")
    return rest.partition(end)[0].strip("\n")


def write_section(body: str, begin: str, end: str, readme: Path = README) -> None:
    section(readme.read_text(), begin, end)  # the markers are there
    head, _, rest = readme.read_text().partition(begin)
    readme.write_text(f"{head}{begin}\n{body}\n{end}{rest.partition(end)[2]}")


def write_settings_table(readme: Path = README) -> None:
    write_section(celeryconfig.settings_table(), TABLE_BEGIN, TABLE_END, readme)
