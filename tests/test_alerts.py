"""The alert rules (deploy/prometheus), tested two ways.

- promtool: `check rules`, `check config` on the example scrape configuration, and
  `test rules` on login-pipeline.rules.test.yml, which must hold a case where each alert
  fires and one where it does not; every alert has a runbook section.
- A real Prometheus (Debian's server) scraping a running pipeline through Flower's
  /metrics with basic auth, evaluating the shipped rules with their durations shortened
  (dev/devkit/prometheus.py): staged faults fire their alerts, read through Prometheus's
  HTTP API, and the alerts clear after recovery; every dashboard panel's query returns data.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import celeryconfig as config
from devkit import dashboard, prometheus, runner, seed
from tasks.pipeline import store
from tests.helpers import (
    Worker,
    free_port,
    kill_group,
    reset_pipeline,
    spawn,
    start_flower,
    stop_process,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "deploy" / "prometheus"
RULES = RULES_DIR / "login-pipeline.rules.yml"
RULE_TESTS = RULES_DIR / "login-pipeline.rules.test.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def promtool(*args: str, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess[str]:
    if not Path(PROMTOOL).exists():
        pytest.fail("promtool is missing: `make test` installs it (apt-get install --no-install-recommends prometheus)")
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_the_rules_and_the_example_scrape_configuration_are_valid() -> None:
    checked = promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = promtool("check", "config", "--syntax-only", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_does_not() -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fires == set(), "alerts never tested firing"
    assert names - silent == set(), "alerts never tested silent"


RUNBOOK_BASE = "https://login-pipeline.example/docs/runbook.md"  # the shipped placeholder


def runbook_url(alert: str) -> str:
    """An alert's runbook_url as shipped: the one base (login_pipeline:runbook_base), its section."""
    return '{{ with query "login_pipeline:runbook_base" }}{{ . | first | label "url" }}{{ end }}#' + alert.lower()


def test_the_runbook_base_is_set_once_and_every_promtool_case_expects_absolute_links() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    bases = [rule for group in groups for rule in group["rules"] if rule.get("record") == "login_pipeline:runbook_base"]
    assert [rule["labels"]["url"] for rule in bases] == [RUNBOOK_BASE]
    first_of_alerts = next(group for group in groups if any("alert" in rule for rule in group["rules"]))
    assert first_of_alerts["rules"][0] is bases[0], "the base must be evaluated before the alerts, in their group"
    expected = [
        alert["exp_annotations"]["runbook_url"]
        for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for check in case.get("alert_rule_test", [])
        for alert in check.get("exp_alerts", [])
    ]
    assert expected and all(re.fullmatch(re.escape(RUNBOOK_BASE) + r"#loginpipeline\w+", url) for url in expected)


def test_every_alert_links_its_runbook_section_which_says_what_to_look_at_and_how_to_fix() -> None:
    sections = dict(re.findall(r"^## (\w+)\n(.*?)(?=^## |\Z)", RUNBOOK.read_text(), re.MULTILINE | re.DOTALL))
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["annotations"]["runbook_url"] == runbook_url(name), name
        assert rule["labels"]["severity"] in ("page", "ticket"), name
        text = sections.get(name, "")
        assert "**Look first.**" in text and "**Fix.**" in text, f"runbook section of {name}"
        fix = text.partition("**Fix.**")[2]
        assert re.search(r"`(python -m tasks|kubectl|docker compose|celery)[^`]*`", fix), f"no command fixes {name}"
    assert set(sections) == {rule["alert"] for rule in alert_rules()}, "runbook sections without an alert"


def test_the_shortened_copy_is_valid_and_shortens_every_wait(tmp_path: Path) -> None:
    short = prometheus.shortened_rules(RULES.read_text(), 30)
    (tmp_path / "rules.yml").write_text(short)
    checked = promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert not re.search(r"for: \d+m|\[\d+[mhd]\]", short), "a duration left unshortened"
    assert "time() - max(login_pipeline_last_fetch_timestamp_seconds) > 4\n" in short
    assert 'le=~"5|5\\\\.0"' in short  # the SLO's 5 s is real events' latency: unchanged


# --- End to end: a real Prometheus scraping a running pipeline ---------------------------
AUTH = ("prometheus", "test-only-scrape-password")
# The shipped rules' durations over 30: `for: 2m` is 4 s, a 10-minute window 20 s, beat
# silent for 4 s instead of 120 s. Prometheus scrapes and evaluates every second.
DIVISOR = 30
FIRE_WITHIN = 60  # seconds: a few `for:` periods, scrapes and evaluations


class Monitored:
    """Worker, beat (its own process, so it can be stopped) and Flower with basic auth on
    the session's stack, scraped by a Prometheus of its own; every process in its own
    group, all killed by `stop` whatever happened."""

    def __init__(self) -> None:
        port = free_port()
        self.prometheus = prometheus.Server(config.STACK_DIR / f"prometheus-{port}", port)
        self.flower_port = free_port()
        self.worker: Worker | None = None
        self.beat: subprocess.Popen | None = None
        self.flower: subprocess.Popen | None = None
        self.server: subprocess.Popen | None = None

    def start(self) -> None:
        self.worker = Worker(f"alerts-{os.getpid()}", heartbeat=True)  # Flower's worker_online needs heartbeats
        self.start_beat()
        self.flower = start_flower(self.flower_port, env={"FLOWER_BASIC_AUTH": ":".join(AUTH)}, name="alerts-flower")
        self.prometheus.configure(f"127.0.0.1:{self.flower_port}", AUTH, DIVISOR)
        self.server = spawn(self.prometheus.command(), self.prometheus.folder / "prometheus.log")
        wait_until(self.prometheus.ready, timeout=30, what="Prometheus ready")
        wait_until(lambda: self.prometheus.target_health() == "up", timeout=30, what="Flower scraped with basic auth")

    def start_beat(self) -> None:
        self.beat = spawn(runner.beat_command(), config.STACK_DIR / "alerts-beat.log")

    def kill_beat(self) -> None:
        if self.beat:
            kill_group(self.beat)

    def stop(self) -> None:
        for process in (self.server, self.beat):
            if process:
                kill_group(process)
        if self.flower:
            stop_process(self.flower)
        if self.worker:
            self.worker.stop()

    def firing(self, name: str) -> list[dict]:
        return self.prometheus.alerts().get(name, [])

    def wait_firing(self, name: str) -> dict:
        return wait_until(lambda: self.firing(name), timeout=FIRE_WITHIN, what=f"{name} firing")[0]

    def wait_clear(self, name: str, timeout: float = FIRE_WITHIN) -> None:
        wait_until(lambda: not self.firing(name), timeout=timeout, what=f"{name} cleared")


@pytest.fixture(scope="module")
def monitored(test_stack: None) -> Iterator[Monitored]:
    reset_pipeline()
    pipeline = Monitored()
    try:
        pipeline.start()
        yield pipeline
    finally:
        pipeline.stop()


def send_events(count: int, seed_value: int) -> int:
    """Send `count` realistic events (a few anomalies among them); how many make rows."""
    events = list(seed.generate(count, seed_value))
    seed.send(config.SOURCE_QUEUE, [body for body, _ in events])
    return sum(valid for _, valid in events)


def rows(database_url: str) -> int:
    conn = store.connect(database_url)
    try:
        return store.totals(conn)["inserted"]
    finally:
        conn.close()


def test_poison_events_fire_dead_letters_naming_their_reasons_and_it_clears(monitored: Monitored) -> None:
    monitored.wait_clear("LoginPipelineDeadLetters")
    seed.send(config.SOURCE_QUEUE, ["{oops", "[1, 2]", '{"device_id": "no user"}'])
    alert = monitored.wait_firing("LoginPipelineDeadLetters")
    description = alert["annotations"]["description"]
    assert alert["labels"]["severity"] == "ticket"
    assert alert["annotations"]["runbook_url"] == f"{RUNBOOK_BASE}#loginpipelinedeadletters"
    assert "not_json" in description, description
    monitored.wait_clear("LoginPipelineDeadLetters")  # no new dead letter for the (shortened) 10 minutes


def test_the_database_refusing_connections_fires_database_down_and_it_clears(
    monitored: Monitored, database_url: str
) -> None:
    monitored.wait_clear("LoginPipelineDatabaseDown")
    before = rows(database_url)
    admin = store.connect(database_url.replace("/postgres?", "/template1?"))
    admin.autocommit = True
    try:
        with admin.cursor() as cur:  # no new connection, every open one cut: Flower's too
            cur.execute("ALTER DATABASE postgres ALLOW_CONNECTIONS false")
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'postgres'")
        valid = send_events(300, 1901)  # batches that meet the refusal, and retry
        alert = monitored.wait_firing("LoginPipelineDatabaseDown")
        assert alert["labels"]["severity"] == "page"
        monitored.worker.wait_for("Retry in", timeout=FIRE_WITHIN)
    finally:
        with admin.cursor() as cur:
            cur.execute("ALTER DATABASE postgres ALLOW_CONNECTIONS true")
        admin.close()
    monitored.wait_clear("LoginPipelineDatabaseDown")
    wait_until(lambda: rows(database_url) >= before + valid, timeout=120, what="the retried batches written")


def test_beat_stopped_fires_beat_down_and_then_stalled_and_both_clear(monitored: Monitored) -> None:
    monitored.wait_clear("LoginPipelineBeatDown")
    monitored.wait_clear("LoginPipelineStalled")
    monitored.kill_beat()
    monitored.wait_firing("LoginPipelineBeatDown")
    send_events(200, 1902)  # a backlog no fetch reads: stalled once no commit came for a while
    stalled = monitored.wait_firing("LoginPipelineStalled")
    assert float(stalled["value"]) >= 200
    monitored.start_beat()
    monitored.wait_clear("LoginPipelineBeatDown")
    monitored.wait_clear("LoginPipelineStalled")


def test_every_dashboard_panel_query_returns_data(monitored: Monitored) -> None:
    """After the faults above (retries, dead letters, commits), each query of
    deploy/grafana/login-pipeline.json, with Grafana's $__rate_interval as 5 minutes."""
    board = json.loads(dashboard.OUTPUT.read_text())
    empty = []
    for title, expr in dashboard.panel_queries(board):
        result = monitored.prometheus.query(expr.replace("$__rate_interval", "5m"))
        values = [float(sample["value"][1]) for sample in result]
        if not any(not math.isnan(value) for value in values):
            empty.append(f"{title}: {expr} -> {values}")
    assert not empty, "panels without data:\n" + "\n".join(empty)


RECIPE_AUTH = "monitor:choose-a-password"  # the recipe's own user and password


def monitoring_recipe() -> list[str]:
    """The shell lines of docs/monitoring.md's Prometheus recipe for `make run`'s pipeline."""
    text = (ROOT / "docs" / "monitoring.md").read_text()
    block = text.split("For `make run`'s\npipeline, on a fresh clone:", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in re.sub(r"\\\n\s*", "", block).splitlines() if line.strip()]


def test_the_monitoring_recipe_run_as_written_scrapes_the_pipeline_with_auth_and_loads_the_rules(
    test_stack: None, tmp_path: Path
) -> None:
    """docs/monitoring.md's recipe, line by line, in a copy of the checkout's deploy/
    (its sed writes a file there): Flower takes the recipe's FLOWER_BASIC_AUTH, as `make run`
    would, on a free port instead of 5555; Prometheus listens on a free port instead of
    9090. Prometheus then scrapes Flower with the password file the recipe wrote, and has
    loaded every rule of the shipped file."""
    lines = monitoring_recipe()
    assert lines[0] == f"export FLOWER_BASIC_AUTH={RECIPE_AUTH}" and lines[1] == "make run", lines
    shutil.copytree(RULES_DIR, tmp_path / "deploy" / "prometheus")
    flower_port, port = free_port(), free_port()
    flower = start_flower(flower_port, env={"FLOWER_BASIC_AUTH": RECIPE_AUTH}, name="recipe-flower")
    server = None
    try:
        *setup, serve = [line.replace("127.0.0.1:5555", f"127.0.0.1:{flower_port}") for line in lines[2:]]
        done = subprocess.run(["sh", "-ec", "\n".join(setup)], cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert serve.startswith("prometheus --config.file=deploy/prometheus/local.yml"), serve
        listen = f"--web.listen-address=127.0.0.1:{port}"
        server = spawn(["sh", "-c", f"exec {serve} {listen}"], tmp_path / "prometheus.log", cwd=tmp_path)
        recipe = prometheus.Server(tmp_path / ".stack" / "prometheus", port)
        wait_until(recipe.ready, timeout=30, what="the recipe's Prometheus ready")
        wait_until(lambda: recipe.target_health() == "up", timeout=40, what="Flower scraped with the recipe's password")
        groups = recipe.api("rules")["groups"]
        loaded = {rule["name"] for group in groups for rule in group["rules"] if rule["type"] == "alerting"}
        assert loaded == {rule["alert"] for rule in alert_rules()}
    finally:
        if server:
            kill_group(server)
        stop_process(flower)
