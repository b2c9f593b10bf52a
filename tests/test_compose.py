"""`docker compose up` as a user types it, on a real container engine (podman).

The shipped docker-compose.yml and Dockerfile run unchanged: an override file maps the official
images to stand-ins built here (tests/compose/standins.py; no registry is reachable), and
tests/compose/project.py plays the two parts of Docker Compose that Debian 12's podman lacks
(health checks on a timer, health-gated `depends_on`). What the stand-ins cannot prove: that the
official images behave as their stand-ins do (LocalStack's own image, PostgreSQL 16 against
Debian's 15).

One project for the module, in order: start, the exercise's 100 events, what a user would check,
a warm stop, a kill -9, and `down -v`.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import psycopg2
import pytest
import yaml

from tests.compose import project as compose_project
from tests.compose import standins
from tests.compose.project import Project, seconds
from tests.helpers import free_port, raw_values, wait_until

SAMPLE = compose_project.ROOT / "data" / "sample_data.json"
LOCALSTACK = "LOCALSTACK_HOST_PORT"
MANIFESTS = compose_project.ROOT / "deploy" / "kubernetes"


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[Project, list[tuple[str, str, float]]]]:
    images = standins.build_all()
    pipeline_image = compose_project.build_pipeline_image(images["python:3.11-slim"])
    ports = {name: free_port() for name in compose_project.PORTS}
    project = Project(f"lpcompose{os.getpid()}", ports)
    try:
        project.prepare(images, pipeline_image)
        waited = project.up()
        yield project, waited
    finally:
        project.compose("down", "-v", "--timeout", "5", check=False)
        project.remove()


def database(project: Project) -> Any:
    return psycopg2.connect(
        host="127.0.0.1",
        port=project.ports["POSTGRES_HOST_PORT"],
        user="postgres",
        password=project.secrets["POSTGRES_PASSWORD"],
        dbname="postgres",
        connect_timeout=5,
    )


def counts(project: Project, user_ids: list[str] | None = None) -> dict[str, int]:
    """Rows and dead letters, all or only of these users (dead letters by their withheld body's user)."""
    with database(project) as conn, conn.cursor() as cur:
        if user_ids is None:
            cur.execute("select (select count(*) from user_logins), (select count(*) from dead_letters)")
            rows, dead = cur.fetchone()
            return {"rows": rows, "dead_letters": dead}
        cur.execute("select user_id, count(*) from user_logins where user_id = any(%s) group by 1", (user_ids,))
        per_user = dict(cur.fetchall())
    return {"rows": sum(per_user.values()), "users": len(per_user), "most": max(per_user.values(), default=0)}


def sqs(project: Project) -> Any:
    return boto3.client(
        "sqs",
        endpoint_url=f"http://127.0.0.1:{project.ports[LOCALSTACK]}",
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


class Flow:
    """Valid events with user ids of their own, sent at a steady rate until stopped."""

    def __init__(self, project: Project, per_second: int = 40) -> None:
        self.client = sqs(project)
        self.queue = self.client.get_queue_url(QueueName="login-queue")["QueueUrl"]
        self.user_ids: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(per_second,), daemon=True)
        self._thread.start()

    def _run(self, per_second: int) -> None:
        while not self._stop.is_set():
            ids = [str(uuid.uuid4()) for _ in range(per_second // 4)]
            entries = [{"Id": str(n), "MessageBody": json.dumps(_event(user_id))} for n, user_id in enumerate(ids)]
            for start in range(0, len(entries), 10):
                self.client.send_message_batch(QueueUrl=self.queue, Entries=entries[start : start + 10])
            self.user_ids += ids
            self._stop.wait(0.25)

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join(timeout=30)
        return self.user_ids


def _event(user_id: str) -> dict[str, str]:
    return {
        "user_id": user_id,
        "app_version": "2.3.0",
        "device_type": "android",
        "ip": "203.0.113.7",
        "locale": "RU",
        "device_id": "593-47-5928",
    }


def exactly_once(project: Project, user_ids: list[str], timeout: float) -> None:
    """Every user's one event is one row, none twice (the flow sends only valid events)."""
    final = wait_until(
        lambda: (c := counts(project, user_ids))["users"] == len(user_ids) and c,
        timeout=timeout,
        poll=2,
        what=f"{len(user_ids)} events as rows",
    )
    assert final["most"] == 1, f"an event became more than one row: {final}"


def test_services_start_in_dependency_order_and_init_runs_once(stack: tuple[Project, list]) -> None:
    project, waited = stack
    gates = {(service, gate) for service, gate, _ in waited}
    assert ("init", "localstack service_healthy") in gates
    assert ("init", "postgres service_healthy") in gates
    for service in ("worker", "beat", "flower"):
        assert (service, "init service_completed_successfully") in gates
    init = project.inspect("init")["State"]
    assert init["ExitCode"] == 0 and project.inspect("init")["RestartCount"] == 0
    for service in ("worker", "beat", "flower"):
        started = project.inspect(service)["State"]["StartedAt"]
        assert started > init["FinishedAt"], f"{service} started before init ended"


def test_each_health_check_turns_healthy(stack: tuple[Project, list]) -> None:
    project, _ = stack
    for service in ("localstack", "postgres", "worker", "beat"):
        project.wait_healthy(service)


def test_pipeline_runs_as_10001_on_a_read_only_root_filesystem(stack: tuple[Project, list]) -> None:
    project, _ = stack
    for service in ("worker", "beat", "flower"):
        container = project.container(service)
        assert standins.podman("exec", container, "id", "-u").stdout.strip() == "10001"
        assert standins.podman("exec", container, "touch", "/app/x", check=False).returncode != 0
        assert standins.podman("exec", container, "touch", "/tmp/x").returncode == 0
        status = standins.podman("exec", container, "grep", "-E", "^(CapEff|NoNewPrivs)", "/proc/1/status").stdout
        assert "CapEff:\t0000000000000000" in status and "NoNewPrivs:\t1" in status, status


def test_the_exercises_events_end_as_99_rows_and_1_dead_letter(stack: tuple[Project, list]) -> None:
    project, _ = stack
    seed = subprocess.run(
        ["make", "--no-print-directory", "compose-seed", f"LOCALSTACK_HOST_PORT={project.ports[LOCALSTACK]}"],
        cwd=compose_project.ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert seed.returncode == 0, seed.stderr
    expected = {"rows": 99, "dead_letters": 1}
    wait_until(lambda: counts(project) == expected, timeout=120, poll=1, what="99 rows, 1 dead letter")


def test_no_raw_ip_or_device_id_in_any_table_or_log(stack: tuple[Project, list]) -> None:
    project, _ = stack
    secrets = raw_values([json.dumps(event) for event in json.loads(SAMPLE.read_text())])
    assert secrets
    with database(project) as conn, conn.cursor() as cur:
        cur.execute("select table_name from information_schema.tables where table_schema = 'public'")
        tables = [name for (name,) in cur.fetchall()]
        dumped = ""
        for table in tables:
            cur.execute(f"select coalesce(json_agg(t)::text, '') from \"{table}\" t")
            dumped += cur.fetchone()[0]
    logs = "".join(project.logs(service) for service in project.config["services"])
    assert not {value for value in secrets if value in dumped}, "raw values in a table"
    assert not {value for value in secrets if value in logs}, "raw values in a container's log"


def test_flower_answers_on_the_published_port_only_with_auth(stack: tuple[Project, list]) -> None:
    project, _ = stack
    url = f"http://127.0.0.1:{project.ports['FLOWER_HOST_PORT']}/workers"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10)
    assert refused.value.code == 401
    user, password = project.secrets["FLOWER_BASIC_AUTH"].split(":", 1)
    request = urllib.request.Request(url)
    request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200


def manifest(component: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod spec and first container of deploy/kubernetes/<component>.yaml's Deployment."""
    for document in yaml.safe_load_all((MANIFESTS / f"{component}.yaml").read_text()):
        if document and document.get("kind") == "Deployment":
            spec = document["spec"]["template"]["spec"]
            return spec, spec["containers"][0]
    raise AssertionError(f"no Deployment in {component}.yaml")


def security_flags(spec: dict[str, Any], container: dict[str, Any]) -> list[str]:
    """The podman flags that match a manifest's security context and its emptyDir mounts."""
    pod, own = spec["securityContext"], container["securityContext"]
    flags = [f"--user={pod['runAsUser']}:{pod['runAsGroup']}", "--read-only-tmpfs=false"]
    if own.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    flags += [f"--cap-drop={capability}" for capability in own.get("capabilities", {}).get("drop", [])]
    if own.get("allowPrivilegeEscalation") is False:
        flags.append("--security-opt=no-new-privileges")
    volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        if "emptyDir" in volumes[mount["name"]]:
            flags.append(f"--tmpfs={mount['mountPath']}:rw,mode=1777")
    return flags


def probe_command(container: dict[str, Any]) -> list[str]:
    """The liveness probe as a command run inside the container (an httpGet through Python)."""
    probe = container["livenessProbe"]
    if "exec" in probe:
        return probe["exec"]["command"]
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == probe["httpGet"]["port"])
    url = f"http://127.0.0.1:{port}{probe['httpGet']['path']}"
    return ["python", "-c", f"import urllib.request; urllib.request.urlopen({url!r}, timeout=5)"]


@pytest.mark.parametrize("component", ["worker", "beat", "flower"])
def test_each_process_runs_under_the_kubernetes_security_context(stack: tuple[Project, list], component: str) -> None:
    """The image under the manifest's own runAsUser/Group, read-only root, dropped capabilities,
    no privilege escalation and emptyDir /tmp (read from the YAML, so they cannot drift), on
    compose's network and settings; its liveness probe passes."""
    project, _ = stack
    spec, container = manifest(component)
    service = project.config["services"][component]
    environment = [f"--env={name}={value}" for name, value in service["environment"].items()]
    name = f"{project.name}_k8s_{component}"
    image = service["image"]
    network = f"--network={project.name}_default"
    standins.podman(
        "run",
        "--detach",
        "--name",
        name,
        network,
        *security_flags(spec, container),
        *environment,
        image,
        *container["command"],
    )
    try:
        probe = probe_command(container)
        wait_until(
            lambda: standins.podman("exec", name, *probe, check=False).returncode == 0,
            timeout=90,
            poll=2,
            what=f"{component}'s liveness probe under the manifest's security context",
        )
        assert standins.podman("exec", name, "id", "-u").stdout.strip() == str(spec["securityContext"]["runAsUser"])
    finally:
        standins.podman("rm", "--force", "--time", "5", name, check=False)


def test_stopping_the_worker_is_a_warm_shutdown_and_loses_nothing(stack: tuple[Project, list]) -> None:
    project, _ = stack
    flow = Flow(project)
    wait_until(lambda: len(flow.user_ids) > 100 and counts(project, flow.user_ids)["rows"] > 20, timeout=60)
    grace = seconds(project.config["services"]["worker"]["stop_grace_period"])
    started = time.monotonic()
    project.compose("stop", "--timeout", str(int(grace)), "worker", timeout=grace + 30)
    took = time.monotonic() - started
    state = project.inspect("worker")["State"]
    assert took < grace, f"stop took {took:.0f} s, the whole grace period"
    assert state["ExitCode"] == 0, f"the worker exited {state['ExitCode']}, not from a warm shutdown"
    project.compose("start", "worker")
    sent = flow.stop()
    exactly_once(project, sent, timeout=120)


def test_a_killed_worker_is_restarted_and_loses_nothing(stack: tuple[Project, list]) -> None:
    project, _ = stack
    restarts = project.inspect("worker")["RestartCount"]
    flow = Flow(project)
    wait_until(lambda: counts(project, flow.user_ids)["rows"] > 20, timeout=60)
    # SIGKILL to the container's main process from outside, as the OOM killer or a crash ends it:
    # `podman kill` (like `docker kill`) counts as a stop by the user, which no policy restarts.
    os.kill(project.inspect("worker")["State"]["Pid"], signal.SIGKILL)
    wait_until(
        lambda: project.inspect("worker")["RestartCount"] > restarts and project.inspect("worker")["State"]["Running"],
        timeout=60,
        what="the restart policy bringing the worker back",
    )
    sent = flow.stop()
    # What the killed worker held comes back after its visibility timeout (90 s by default).
    exactly_once(project, sent, timeout=200)


def test_down_v_leaves_no_container_network_or_volume(stack: tuple[Project, list]) -> None:
    project, _ = stack
    project.compose("down", "-v", "--timeout", "30")
    assert project.leftovers() == {}
