"""The Grafana dashboard deploy/grafana/login-pipeline.json, built here with Grafana's
own grafana-foundation-sdk: `python -m devkit.dashboard` writes it, `--check` fails
when the committed file differs from what this module builds (tests/unit/test_dashboard.py).

What an operator of a login pipeline watches: freshness (p50, p99, the share within the
SLO's 5 s), throughput, backlog and the oldest waiting event, dead letters by reason and
the dead-letter queues, retries, batch duration, workers online, and whether the
database, SQS, beat and commits are alive. Every query reads metrics of Flower's
/metrics (docs/runbook.md, docs/monitoring.md); the end-to-end test in
tests/test_alerts.py runs each of them on a real Prometheus and checks it returns data.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.builders.common import StackingConfig
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import StackingMode
from grafana_foundation_sdk.models.dashboard import DataSourceRef

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "deploy" / "grafana" / "login-pipeline.json"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"
SLO_SECONDS = 5


def query(expr: str, legend: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).datasource(DATASOURCE)


def quantile(q: float, histogram: str) -> str:
    return f"histogram_quantile({q}, sum by (le) (rate({histogram}_bucket[{RATE}])))"


def with_queries(panel: Any, queries: tuple[prometheus.Dataquery, ...]) -> Any:
    """The panel, with its queries as refId A, B, C..., on the dashboard's data source."""
    panel = panel.datasource(DATASOURCE)
    for ref, target in zip("ABCDEFGH", queries, strict=False):
        panel = panel.with_target(target.ref_id(ref))
    return panel


def graph(title: str, description: str, unit: str, *queries: prometheus.Dataquery, width: int = 12) -> Any:
    panel = timeseries.Panel().title(title).description(description).unit(unit)
    return with_queries(panel, queries).height(8).span(width).fill_opacity(10)


def single(title: str, description: str, unit: str, *queries: prometheus.Dataquery, width: int = 6) -> Any:
    panel = stat.Panel().title(title).description(description).unit(unit)
    return with_queries(panel, queries).height(4).span(width)


def freshness_panels() -> Iterator[Any]:
    histogram = "login_pipeline_freshness_seconds"
    yield graph(
        "Freshness: send to commit",
        "Seconds from an event's SentTimestamp to its row's commit. SLO: 99% within 5 s.",
        "s",
        query(quantile(0.5, histogram), "p50"),
        query(quantile(0.99, histogram), "p99"),
    )
    within = (
        f'sum(rate({histogram}_bucket{{le=~"{SLO_SECONDS}|{SLO_SECONDS}\\\\.0"}}[{RATE}]))'
        f" / sum(rate({histogram}_count[{RATE}]))"
    )
    yield graph(
        "Events committed within 5 s",
        "The SLO's good events: 99% or more over 30 days (alerts: LoginPipelineFreshnessBudgetBurn*).",
        "percentunit",
        query(within, "within 5 s"),
    )


def flow_panels() -> Iterator[Any]:
    yield graph(
        "Throughput",
        "Events per second: processed by batches, rows written, deliveries skipped as already written.",
        "ops",
        query(f"sum(rate(login_pipeline_received_total[{RATE}]))", "received"),
        query(f"sum(rate(login_pipeline_rows_inserted_total[{RATE}]))", "inserted"),
        query(f"sum(rate(login_pipeline_duplicates_skipped_total[{RATE}]))", "duplicates skipped"),
    )
    yield graph(
        "Backlog",
        "Messages waiting (visible) and being worked on (in flight) in login-queue and Celery's queues.",
        "short",
        query('sum by (queue, state) (login_pipeline_queue_messages{queue!~".*-dlq"})', "{{queue}} {{state}}"),
    ).stacking(StackingConfig().mode(StackingMode.NORMAL))
    yield graph(
        "Oldest waiting event",
        "Estimated age of the oldest message waiting in login-queue (LoginPipelineFallingBehind).",
        "s",
        query("max(login_pipeline_oldest_message_age_seconds)", "oldest"),
    )
    yield graph(
        "Batch duration",
        "Seconds of one committed mask-and-insert batch.",
        "s",
        query(quantile(0.5, "login_pipeline_batch_duration_seconds"), "p50"),
        query(quantile(0.99, "login_pipeline_batch_duration_seconds"), "p99"),
    )


def loss_panels() -> Iterator[Any]:
    yield graph(
        "Dead letters by reason",
        "Records set aside to login-queue-dlq per interval, by reason class (LoginPipelineDeadLetters).",
        "short",
        query(f"sum by (reason) (increase(login_pipeline_dead_letters_total[{RATE}]))", "{{reason}}"),
        width=8,
    )
    yield graph(
        "Dead-letter queues",
        "Messages in login-queue-dlq (records) and login-pipeline-batches-dlq (whole batches).",
        "short",
        query('sum by (queue) (login_pipeline_queue_messages{queue=~".*-dlq"})', "{{queue}}"),
        width=8,
    )
    yield graph(
        "Retries",
        "Task retries per second, from Flower's task events (LoginPipelineRetryRateHigh).",
        "ops",
        query(f'sum by (task) (rate(flower_events_total{{type="task-retried"}}[{RATE}]))', "{{task}}"),
        width=8,
    )


def health_panels() -> Iterator[Any]:
    yield single(
        "Workers online",
        "Workers whose heartbeats reach Flower (LoginPipelineNoWorkerOnline).",
        "short",
        query("sum(login_pipeline_workers_alive)", "workers"),
    )
    yield single(
        "Database and SQS up",
        "1 when the scrape reached PostgreSQL and SQS (LoginPipelineDatabaseDown, LoginPipelineSqsDown).",
        "short",
        query("max(login_pipeline_database_up)", "database"),
        query("max(login_pipeline_sqs_up)", "SQS"),
    )
    yield single(
        "Since the last fetch",
        "Seconds since a worker last started a fetch (LoginPipelineFetchSilent, LoginPipelineBeatDown).",
        "s",
        query("time() - max(login_pipeline_last_fetch_timestamp_seconds)", "fetch"),
    )
    yield single(
        "Since the last commit",
        "Seconds since a batch last committed (LoginPipelineStalled, with a backlog).",
        "s",
        query("time() - max(login_pipeline_last_commit_timestamp_seconds)", "commit"),
    )


def build() -> dict[str, Any]:
    board = (
        dashboard.Dashboard("Login pipeline")
        .uid("login-pipeline")
        .description("Freshness, backlog and loss of the login pipeline; alerts in deploy/prometheus, runbook in docs.")
        .tags(["login-pipeline", "celery", "sqs"])
        .time("now-6h", "now")
        .refresh("30s")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
    )
    rows = (
        ("Health", health_panels()),
        ("Freshness", freshness_panels()),
        ("Flow", flow_panels()),
        ("Loss and retries", loss_panels()),
    )
    panel_id = 0
    for title, panels in rows:
        panel_id += 1
        board = board.with_row(dashboard.Row(title).id(panel_id))
        for panel in panels:
            panel_id += 1
            board = board.with_panel(panel.id(panel_id))
    return json.loads(json.dumps(board.build(), cls=JSONEncoder))


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def panel_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """Every (panel title, PromQL expression) of a dashboard's JSON."""
    return [
        (panel["title"], target["expr"])
        for panel in board["panels"]
        if panel.get("type") != "row"
        for target in panel.get("targets", [])
    ]


def main(argv: list[str]) -> int:
    if "--check" in argv:
        if not OUTPUT.exists() or OUTPUT.read_text() != render():
            print(f"{OUTPUT.relative_to(ROOT)} is stale: run `python -m devkit.dashboard`", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(render())
    print(OUTPUT.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
