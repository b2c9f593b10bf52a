"""Flower's exposure (tasks/ops/flower.py) and the metrics collector's role (tasks/ops/metrics.py).

Each failure the Flower issue reported, through real processes: Flower started with
options that would expose it, /metrics without credentials, a cross-origin write with
the operator's credentials, and the collector under the role Flower is given.
"""

from __future__ import annotations

import base64
import http.client
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import psycopg2
import pytest

from tasks.ops import flower
from tasks.ops.metrics import PipelineCollector
from tests.helpers import ROOT, flower_request, free_port, start_flower, stop_process

pytestmark = pytest.mark.usefixtures("test_stack")
AUTH = ("operator", "test-only-password")


def run_flower(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Flower as an operator would start it, expected to refuse before it serves anything."""
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks", "flower", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "FLOWER_PORT": str(free_port()), **(env or {})},
        start_new_session=True,
    )


CONF = "--conf=flowerconfig.py"


@pytest.mark.parametrize(
    ("args", "env", "why"),
    [
        ([CONF, "--address=0.0.0.0"], {"FLOWER_ADDRESS": "127.0.0.1"}, "would listen on 0.0.0.0 without auth"),
        ([CONF], {"FLOWER_ADDRESS": "0.0.0.0"}, "would listen on 0.0.0.0 without auth"),
        ([CONF, "--address="], {}, "would listen on every interface without auth"),
        ([CONF], {"FLOWER_UNAUTHENTICATED_API": "true"}, "FLOWER_UNAUTHENTICATED_API opens"),
        ([CONF], {"FLOWER_ALLOW_CONTROL": "true"}, "FLOWER_ALLOW_CONTROL needs FLOWER_BASIC_AUTH"),
    ],
    ids=["cli-address", "env-address", "empty-address", "unauthenticated-api", "control-without-auth"],
)
def test_flower_refuses_to_start_exposed(args: list[str], env: dict[str, str], why: str) -> None:
    assert_refused(run_flower(*args, env=env), why)


def test_flower_without_the_config_file_is_checked_too(tmp_path: Path) -> None:
    """Started elsewhere, without flowerconfig.py, Flower's default is every interface: refused."""
    assert_refused(run_flower(cwd=tmp_path), "would listen on every interface without auth")


EMPTY = "lacks a user or a password"
SHORT = f"shorter than {flower.MIN_PASSWORD_LENGTH} characters"
# An entry without both parts in the environment is refused earlier, by the settings'
# own check (celeryconfig: exit 2), before Flower is built.
MALFORMED = "configuration: FLOWER_BASIC_AUTH is not valid"


@pytest.mark.parametrize(
    ("args", "env", "why"),
    [
        ([CONF, "--address=0.0.0.0", "--basic_auth="], {}, EMPTY),
        ([CONF, "--basic_auth=:"], {}, EMPTY),  # on the loopback too: an empty entry is never auth
        ([CONF], {"FLOWER_ADDRESS": "0.0.0.0", "FLOWER_BASIC_AUTH": ":"}, MALFORMED),
        ([CONF], {"FLOWER_ADDRESS": "0.0.0.0", "FLOWER_BASIC_AUTH": "admin:"}, MALFORMED),
        ([CONF], {"FLOWER_ADDRESS": "0.0.0.0", "FLOWER_BASIC_AUTH": "admin:a-long-password,:"}, MALFORMED),
        ([CONF, "--address=0.0.0.0", "--basic_auth=admin:short-pw"], {}, SHORT),
        ([CONF], {"FLOWER_ADDRESS": "0.0.0.0", "FLOWER_BASIC_AUTH": "admin:11-chars-pw"}, SHORT),
    ],
    ids=[
        "cli-empty",
        "cli-colon-loopback",
        "env-colon",
        "env-no-password",
        "env-second-entry",
        "cli-short",
        "env-short",
    ],
)
def test_flower_refuses_an_empty_or_short_credential(args: list[str], env: dict[str, str], why: str) -> None:
    assert_refused(run_flower(*args, env=env), why)


def test_flowers_own_env_variable_is_checked_without_our_config(tmp_path: Path) -> None:
    """Without flowerconfig.py, Flower reads FLOWER_BASIC_AUTH itself: still checked."""
    assert_refused(run_flower("--address=0.0.0.0", cwd=tmp_path, env={"FLOWER_BASIC_AUTH": ":"}), MALFORMED)


@pytest.mark.parametrize(
    ("entry", "why"), [("admin:", EMPTY), (":a-long-enough-password", EMPTY), ("admin:short", SHORT)]
)
def test_a_config_file_credential_is_checked(tmp_path: Path, entry: str, why: str) -> None:
    conf = tmp_path / "flower-conf.py"
    conf.write_text(f"address = '0.0.0.0'\nbasic_auth = [{entry!r}]\n")
    assert_refused(run_flower(f"--conf={conf}"), why)


def assert_refused(result: subprocess.CompletedProcess[str], why: str) -> None:
    assert result.returncode != 0
    starts = ("flower refused to start:", "configuration:")
    refusals = [line for line in result.stderr.splitlines() if line.startswith(starts)]
    assert len(refusals) == 1 and why in refusals[0], result.stderr[-2000:]


def options(**given: object) -> SimpleNamespace:
    defaults = {"address": "127.0.0.1", "unix_socket": "", "basic_auth": None, "auth": "", "read_only": False}
    return SimpleNamespace(**{**defaults, **given})


def test_read_only_is_forced_unless_control_is_allowed() -> None:
    opts = options()  # --read_only=False on the command line, say
    flower.check_options(opts, allow_control=False, environ={})
    assert opts.read_only is True
    opts = options(address="0.0.0.0", basic_auth=["admin:a-long-enough-password"])
    flower.check_options(opts, allow_control=True, environ={})
    assert opts.read_only is False


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_loopback_without_auth_is_allowed_read_only(address: str) -> None:
    assert flower.refusal(options(address=address), allow_control=False, environ={}) is None


@pytest.fixture(scope="module")
def guarded_flower(database_url: str) -> Iterator[int]:
    """Flower on every interface with basic auth and control opted in; metrics as login_metrics."""
    port = free_port()
    process = start_flower(
        port,
        env={
            "FLOWER_ADDRESS": "0.0.0.0",
            "FLOWER_BASIC_AUTH": ":".join(AUTH),
            "FLOWER_ALLOW_CONTROL": "true",
            "METRICS_DATABASE_URL": as_role(database_url, "login_metrics"),
        },
    )
    try:
        yield port
    finally:
        stop_process(process)


def test_metrics_need_auth_when_auth_is_configured(guarded_flower: int) -> None:
    assert flower_request(guarded_flower, "/metrics")[0] == 401
    assert flower_request(guarded_flower, "/metrics", auth=("operator", "wrong"))[0] == 401
    status, body = flower_request(guarded_flower, "/metrics", auth=AUTH)
    assert status == 200 and "login_pipeline_database_up 1.0" in body
    assert "login_pipeline_rows_inserted_total" in body
    # The probe's endpoint stays open, and says nothing but OK.
    assert flower_request(guarded_flower, "/healthcheck") == (200, "OK")


def test_pages_and_api_need_auth(guarded_flower: int) -> None:
    for path in ("/", "/tasks", "/broker", "/api/workers"):
        assert flower_request(guarded_flower, path)[0] == 401, path


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://attacker.example", "Content-Type": "text/plain"},
        {"Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"},
    ],
    ids=["foreign-origin", "cross-site"],
)
def test_a_cross_origin_write_is_refused_even_with_control_allowed(guarded_flower: int, headers: dict) -> None:
    status, body = flower_request(
        guarded_flower,
        "/api/task/async-apply/tasks.fetch_batches",
        method="POST",
        auth=AUTH,  # the browser sends the operator's cached credentials along
        data=b"{}",
        headers=headers,
    )
    assert status == 403 and "task-id" not in body, (status, body)


def test_control_is_there_when_opted_in(guarded_flower: int) -> None:
    """The same request from Flower's own origin reaches the endpoint (an unknown task: 404)."""
    status, body = flower_request(
        guarded_flower, "/api/task/async-apply/tasks.no_such_task", method="POST", auth=AUTH, data=b"{}"
    )
    assert status == 404 and "Unknown task" in body, (status, body)


def test_the_broker_page_lists_every_pipeline_queue(guarded_flower: int) -> None:
    from tasks.ops.status import queue_names

    status, body = flower_request(guarded_flower, "/broker", auth=AUTH)
    assert status == 200 and "not supported" not in body
    for name in queue_names():
        assert f"<td>{name}</td>" in body


# --- DNS rebinding: a Flower without auth answers loopback host names only ---------
@pytest.fixture(scope="module")
def open_flower(test_stack: None) -> Iterator[int]:
    """Flower as `make run` starts it: the loopback, no auth."""
    port = free_port()
    process = start_flower(port, name="flower-open")
    try:
        yield port
    finally:
        stop_process(process)


def status_with_host(port: int, path: str, host: str, method: str = "GET", auth: str = "") -> int:
    """The status of one request to 127.0.0.1:`port` that names `host` in its Host header,
    as a browser does after an attacker's name was rebound to 127.0.0.1."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Host": host, **({"Authorization": auth} if auth else {})}
        conn.request(method, path, body=b"{}" if method == "POST" else None, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.parametrize(
    "path", ["/", "/workers", "/tasks", "/broker", "/metrics", "/api/workers", "/static/favicon.ico"]
)
def test_a_rebound_host_name_reaches_nothing(open_flower: int, path: str) -> None:
    for host in (f"rebind.attacker.example:{open_flower}", "rebind.attacker.example", "127.0.0.1.nip.io", "0.0.0.0"):
        assert status_with_host(open_flower, path, host) == 421, (path, host)
    assert status_with_host(open_flower, path, "attacker.example", method="POST") == 421


@pytest.mark.parametrize("host", ["localhost", "localhost:{port}", "127.0.0.1:{port}", "127.0.0.2", "[::1]:{port}"])
def test_loopback_host_names_are_served(open_flower: int, host: str) -> None:
    for path in ("/workers", "/static/favicon.ico"):
        assert status_with_host(open_flower, path, host.format(port=open_flower)) == 200, path


def test_under_auth_any_host_name_is_served(guarded_flower: int) -> None:
    """Behind auth Flower is reached by its real name; the credential is the control."""
    auth = "Basic " + base64.b64encode(":".join(AUTH).encode()).decode()
    assert status_with_host(guarded_flower, "/workers", "flower.example.internal", auth=auth) == 200
    assert status_with_host(guarded_flower, "/workers", "flower.example.internal") == 401


# --- The metrics collector and its role -------------------------------------------
def as_role(url: str, role: str) -> str:
    """The same server, as a session whose role is `role` from its start."""
    return f"{url}{'&' if '?' in url else '?'}options={quote(f'-c role={role}')}"


def metric_values(collector: PipelineCollector) -> dict[str, float]:
    return {sample.name: sample.value for family in collector.collect() for sample in family.samples}


def test_the_collector_reads_the_ledger_as_login_metrics(database_url: str, db) -> None:
    collector = PipelineCollector(lambda: as_role(database_url, "login_metrics"))
    try:
        before = metric_values(collector)
        assert before["login_pipeline_database_up"] == 1
        with db.cursor() as cur:
            cur.execute("INSERT INTO ingest_batches (received, inserted, duplicates, dead_lettered) VALUES (7,6,0,1)")
        db.commit()
        after = metric_values(collector)
        assert after["login_pipeline_received_total"] == before["login_pipeline_received_total"] + 7
        assert after["login_pipeline_dead_lettered_total"] == before["login_pipeline_dead_lettered_total"] + 1
    finally:
        collector.close()


def test_login_metrics_reads_nothing_but_the_ledger(database_url: str) -> None:
    conn = psycopg2.connect(as_role(database_url, "login_metrics"))
    try:
        for table in ("user_logins", "dead_letters", "unmask_audit"):
            with pytest.raises(psycopg2.errors.InsufficientPrivilege), conn.cursor() as cur:
                cur.execute(f"SELECT 1 FROM {table} LIMIT 1")
            conn.rollback()
    finally:
        conn.close()


def test_the_role_the_worker_has_cannot_serve_metrics(database_url: str) -> None:
    """Why Flower needs login_metrics: the writer (the manifests' old choice) may not read the ledger."""
    collector = PipelineCollector(lambda: as_role(database_url, "login_pipeline_writer"))
    try:
        assert metric_values(collector) == {"login_pipeline_database_up": 0}
    finally:
        collector.close()


def backend_pid(collector: PipelineCollector) -> int:
    assert collector._conn is not None
    return collector._conn.get_backend_pid()


def test_the_collector_keeps_one_connection_and_reconnects(database_url: str, db) -> None:
    collector = PipelineCollector(lambda: as_role(database_url, "login_metrics"))
    try:
        metric_values(collector)
        first = backend_pid(collector)
        metric_values(collector)
        assert backend_pid(collector) == first  # one connection across scrapes
        with db.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (first,))
        db.commit()
        assert metric_values(collector)["login_pipeline_database_up"] == 1  # reconnected within the scrape
        assert backend_pid(collector) != first
    finally:
        collector.close()


def test_the_collector_reports_an_unreachable_database_as_down() -> None:
    collector = PipelineCollector(lambda: f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    assert metric_values(collector) == {"login_pipeline_database_up": 0}


# --- Failing closed: without its safety wrappers, Flower does not serve ------------
UNHOOKED = '''"""The pipeline's app with Flower's hook not running (tasks/ops/flower.py install())."""
from tasks.ops import flower

flower.install = lambda: None
from tasks.celery import app  # noqa: E402
'''


def test_flower_without_its_safety_wrappers_refuses_to_serve(tmp_path: Path, open_flower: int) -> None:
    """The hook disabled, Flower refuses to start, in one line; started as usual, it serves."""
    (tmp_path / "unhooked.py").write_text(UNHOOKED)
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "unhooked", "flower", CONF, "--address=127.0.0.1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "FLOWER_PORT": str(free_port()), "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])},
        start_new_session=True,
    )
    assert_refused(
        result, "safety wrappers are not in place (the Host check, the SQS Broker page, /metrics behind auth)"
    )
    assert "Traceback" not in result.stderr
    assert flower_request(open_flower, "/healthcheck") == (200, "OK")
