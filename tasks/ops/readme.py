"""README's generated parts: the configuration table, made from the declarations of
celeryconfig.Settings, and the metrics table, made from tasks/ops/metrics.py's specs
(`python -m tasks config --write-readme`, `make docs`), so neither can drift."""

from __future__ import annotations

from pathlib import Path

import celeryconfig

README = Path(__file__).resolve().parents[2] / "README.md"
TABLE_BEGIN, TABLE_END = "<!-- settings:begin -->", "<!-- settings:end -->"
METRICS_BEGIN, METRICS_END = "<!-- metrics:begin -->", "<!-- metrics:end -->"


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


def _replace(text: str, begin: str, end: str, block: str) -> str:
    head, found, rest = text.partition(begin)
    if not found:
        raise SystemExit(f"README has no {begin} marker")
    tail = rest.partition(end)[2]
    return f"{head}{begin}\n{block}\n{end}{tail}"


def write_settings_table(readme: Path = README) -> None:
    """Both generated tables (the name is kept for `config --write-readme`)."""
    from tasks.ops.metrics import metrics_table

    text = _replace(readme.read_text(), TABLE_BEGIN, TABLE_END, settings_table())
    readme.write_text(_replace(text, METRICS_BEGIN, METRICS_END, metrics_table()))
