"""The bench runs end to end at a small N (it is a script that prints figures; this only
keeps it working, and asserts nothing about speed)."""

import json

from tests.helpers import python_m_tasks


def test_bench_prints_figures_and_writes_json_and_a_chart(clean, tmp_path) -> None:
    result = python_m_tasks("dev", "bench", "--events", "2000", "--out", str(tmp_path), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x the best ceiling" in result.stdout
    figures = json.loads((tmp_path / "bench.json").read_text())
    assert figures["events"] == 2000 and figures["pipeline_per_s"] > 0
    assert [c["clients"] for c in figures["ceilings"]] == [1, 2, 4]
    assert all(c["events"] == 2000 and c["per_s"] > 0 and c["cpu_us_per_event"] > 0 for c in figures["ceilings"])
    assert figures["ceiling_per_s"] == max(c["per_s"] for c in figures["ceilings"]) and figures["ceiling_end_per_s"] > 0
    assert figures["worker_cpu_us_per_event"] > 0 and figures["last_tenth_per_s"] > 0
    # what the pipeline and the bare clients ask of LocalStack: its CPU and calls per event
    assert figures["localstack_cpu_us_per_event"] > 0
    # over the steady part by rows committed, which at 2,000 events can fall between two looks
    assert isinstance(figures["localstack_calls_per_1000"], dict)
    assert all(c["localstack_calls_per_1000"]["sqs.DeleteMessageBatch"] >= 100 for c in figures["ceilings"])
    assert set(figures["stage_ms_per_batch"]) == {"receive", "hand-off", "parse and mask", "insert", "delete"}
    assert set(figures["receive_call_cpu_us"]) == {"botocore", "botocore, no parameter validation", "lean"}
    assert figures["peak_rss_mb"]
    assert (tmp_path / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_at_a_steady_rate_reports_freshness_from_outside_and_from_the_histogram(clean, tmp_path) -> None:
    result = python_m_tasks("dev", "bench", "--rate", "40", "--seconds", "5", "--out", str(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "freshness, outside" in result.stdout and "freshness, histogram" in result.stdout
    figures = json.loads((tmp_path / "freshness.json").read_text())
    assert figures["events"] == 200 and figures["rate"] == 40
    assert set(figures["outside"]) == set(figures["histogram"]) == {"p50", "p90", "p99", "max"}
    assert figures["histogram"]["p50"] > 0 and figures["outside"]["p50"] > 0


def test_bench_through_a_latency_proxy_reports_each_cell_beside_the_model(clean, tmp_path) -> None:
    """One cell (10 ms each way, 2 pool processes), tiny: the worker goes through the
    proxies to SQS and PostgreSQL, and every figure of docs/performance.md's table is there."""
    args = ("--latency-ms", "10", "--processes", "2", "--events", "300", "--seconds", "2")
    result = python_m_tasks("dev", "bench", *args, "--out", str(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    [cell] = json.loads((tmp_path / "network.json").read_text())
    assert (cell["latency_ms"], cell["processes"]) == (10, 2)
    assert cell["throughput"]["pipeline_per_s"] > 0 and cell["freshness"]["outside"]["p50"] > 0.04  # 2 round trips
    assert all(cell["carried"][to]["up"] > 0 and cell["carried"][to]["down"] > 0 for to in ("sqs", "postgresql"))
    assert cell["predicted"]["per_s"] > 0 and cell["predicted"]["calls_per_1000"] > 200
    assert "| 10 ms | 2 |" in (tmp_path / "network.md").read_text()
