"""README's generated part: the configuration table, made from the declarations of
celeryconfig.Settings (`python -m tasks config --write-readme`, `make docs`), so it
cannot drift."""

from __future__ import annotations

from pathlib import Path

import celeryconfig

README = Path(__file__).resolve().parents[2] / "README.md"
TABLE_BEGIN, TABLE_END = "<!-- settings:begin -->", "<!-- settings:end -->"


def shown_default(name: str) -> str:
    """A setting's default as README shows it: declared, or the default itself."""
    field = celeryconfig.Settings.model_fields[name]
    shown = (field.json_schema_extra or {}).get("shown")  # type: ignore[union-attr]
    if isinstance(shown, str):
        return shown
    default = field.default
    return f"`{str(default).lower() if isinstance(default, bool) else default}`" if default != "" else "—"


def settings_table() -> str:
    """README's configuration table, in the order the settings are declared."""
    rows = ["| variable | default | accepts | meaning |", "|---|---|---|---|"]
    for name, field in celeryconfig.Settings.model_fields.items():
        rows.append(f"| `{name}` | {shown_default(name)} | {celeryconfig.accepts(name)} | {field.description} |")
    return "\n".join(rows)


def write_settings_table(readme: Path = README) -> None:
    head, found, rest = readme.read_text().partition(TABLE_BEGIN)
    if not found:
        raise SystemExit(f"{readme} has no {TABLE_BEGIN} marker")
    tail = rest.partition(TABLE_END)[2]
    readme.write_text(f"{head}{TABLE_BEGIN}\n{settings_table()}\n{TABLE_END}{tail}")
