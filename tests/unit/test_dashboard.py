"""The Grafana dashboard: the committed JSON is what dev/devkit/dashboard.py builds, and
it has the panels an operator needs (the end-to-end test in tests/test_alerts.py runs
every query on a real Prometheus)."""

from __future__ import annotations

import json

from devkit import dashboard


def test_the_committed_dashboard_is_what_the_module_builds() -> None:
    assert dashboard.OUTPUT.read_text() == dashboard.render(), "stale: run `python -m devkit.dashboard`"


def test_the_dashboard_shows_freshness_flow_loss_and_health() -> None:
    board = json.loads(dashboard.OUTPUT.read_text())
    queries = dashboard.panel_queries(board)
    panels = {title for title, _ in queries}
    assert {
        "Freshness: send to commit",
        "Throughput",
        "Backlog",
        "Dead letters by reason",
        "Retries",
        "Batch duration",
        "Workers online",
    } <= panels
    exprs = " ".join(expr for _, expr in queries)
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.99," in exprs
    panel_ids = [panel["id"] for panel in board["panels"]]
    assert len(panel_ids) == len(set(panel_ids))
    for panel in board["panels"]:
        refs = [target["refId"] for target in panel.get("targets", [])]
        assert len(refs) == len(set(refs)) and all(refs), panel["title"]
