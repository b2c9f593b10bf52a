"""README's generated parts, between their markers: the configuration table, made from
the declarations of celeryconfig.Settings, the metrics table, made from
tasks/ops/metrics.py's specs (both `python -m tasks config --write-readme`), and the
commands table, made from the command line (tasks/cli/readme.py); `make docs` writes
them all, and tests hold README equal to them, so they cannot drift."""

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


def section(text: str, begin: str, end: str) -> str:
    """What stands between the markers `begin` and `end` in `text`."""
    _, found, rest = text.partition(begin)
    if not found or end not in rest:
        raise SystemExit(f"README has no {begin} ... {end} markers")
    return rest.partition(end)[0].strip("\n")


def _replace(text: str, begin: str, end: str, block: str) -> str:
    section(text, begin, end)  # the markers are there
    head, _, rest = text.partition(begin)
    return f"{head}{begin}\n{block}\n{end}{rest.partition(end)[2]}"


def write_section(body: str, begin: str, end: str, readme: Path = README) -> None:
    readme.write_text(_replace(readme.read_text(), begin, end, body))


def write_settings_table(readme: Path = README) -> None:
    """Both generated tables (the name is kept for `config --write-readme`)."""
    from tasks.ops.metrics import metrics_table

    text = _replace(readme.read_text(), TABLE_BEGIN, TABLE_END, settings_table())
    readme.write_text(_replace(text, METRICS_BEGIN, METRICS_END, metrics_table()))
