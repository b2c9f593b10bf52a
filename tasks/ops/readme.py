"""README's generated parts: the configuration table, made from celeryconfig's
declarations, and the metrics table, made from tasks/ops/metrics.py's specs
(`python -m tasks config --write-readme`, `make docs`), so neither can drift."""

from __future__ import annotations

from pathlib import Path

import celeryconfig

README = Path(__file__).resolve().parents[2] / "README.md"
TABLE_BEGIN, TABLE_END = "<!-- settings:begin -->", "<!-- settings:end -->"
METRICS_BEGIN, METRICS_END = "<!-- metrics:begin -->", "<!-- metrics:end -->"


def _replace(text: str, begin: str, end: str, block: str) -> str:
    head, found, rest = text.partition(begin)
    if not found:
        raise SystemExit(f"README has no {begin} marker")
    tail = rest.partition(end)[2]
    return f"{head}{begin}\n{block}\n{end}{tail}"


def write_settings_table(readme: Path = README) -> None:
    """Both generated tables (the name is kept for `config --write-readme`)."""
    from tasks.ops.metrics import metrics_table

    text = _replace(readme.read_text(), TABLE_BEGIN, TABLE_END, celeryconfig.settings_table())
    readme.write_text(_replace(text, METRICS_BEGIN, METRICS_END, metrics_table()))
