"""The docs' generated parts, between their markers: the configuration table
(docs/configuration.md), made from the declarations of celeryconfig.Settings, the
metrics table (docs/monitoring.md), made from tasks/ops/metrics.py's specs, and the
commands table (docs/commands.md), made from the command line (commands_doc.py);
`python -m tasks dev docs` (`make docs`) writes them all, and tests hold the docs equal
to them, so they cannot drift."""

from __future__ import annotations

from pathlib import Path

import celeryconfig

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"  # the settings table
MONITORING = DOCS / "monitoring.md"  # the metrics table
TABLE_BEGIN, TABLE_END = "<!-- settings:begin -->", "<!-- settings:end -->"
METRICS_BEGIN, METRICS_END = "<!-- metrics:begin -->", "<!-- metrics:end -->"


def shown_default(name: str) -> str:
    """A setting's default as the table shows it: declared, or the default itself."""
    field = celeryconfig.Settings.model_fields[name]
    shown = (field.json_schema_extra or {}).get("shown")  # type: ignore[union-attr]
    if isinstance(shown, str):
        return shown
    default = field.default
    return f"`{str(default).lower() if isinstance(default, bool) else default}`" if default != "" else "—"


def settings_table() -> str:
    """The configuration table, in the order the settings are declared."""
    rows = ["| variable | default | accepts | meaning |", "|---|---|---|---|"]
    for name, field in celeryconfig.Settings.model_fields.items():
        rows.append(f"| `{name}` | {shown_default(name)} | {celeryconfig.accepts(name)} | {field.description} |")
    return "\n".join(rows)


def section(text: str, begin: str, end: str) -> str:
    """What stands between the markers `begin` and `end` in `text`."""
    _, found, rest = text.partition(begin)
    if not found or end not in rest:
        raise SystemExit(f"no {begin} ... {end} markers")
    return rest.partition(end)[0].strip("\n")


def _replace(text: str, begin: str, end: str, block: str) -> str:
    section(text, begin, end)  # the markers are there
    head, _, rest = text.partition(begin)
    return f"{head}{begin}\n{block}\n{end}{rest.partition(end)[2]}"


def write_section(body: str, begin: str, end: str, doc: Path) -> None:
    """Replace what stands between the markers in `doc` with `body`."""
    doc.write_text(_replace(doc.read_text(), begin, end, body))


def write_tables() -> list[Path]:
    """The settings table and the metrics table (`dev docs` writes them with the commands table); the files written."""
    from tasks.ops.metrics import metrics_table

    write_section(settings_table(), TABLE_BEGIN, TABLE_END, CONFIGURATION)
    write_section(metrics_table(), METRICS_BEGIN, METRICS_END, MONITORING)
    return [CONFIGURATION, MONITORING]
