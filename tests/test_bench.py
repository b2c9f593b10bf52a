"""The bench runs end to end at a small N (it is a script that prints figures; this only
keeps it working, and asserts nothing about speed)."""

import json

from tests.helpers import python_m_tasks


def test_bench_prints_figures_and_writes_json_and_a_chart(clean, tmp_path) -> None:
    result = python_m_tasks("dev", "bench", "--events", "2000", "--out", str(tmp_path), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x the ceiling" in result.stdout
    figures = json.loads((tmp_path / "bench.json").read_text())
    assert figures["events"] == 2000 and figures["ceiling_per_s"] > 0 and figures["pipeline_per_s"] > 0
    assert set(figures["stage_ms_per_batch"]) == {"receive", "hand-off", "parse and mask", "insert", "delete"}
    assert figures["peak_rss_mb"]
    assert (tmp_path / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
