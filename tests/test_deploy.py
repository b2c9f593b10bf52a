"""Dockerfile, compose and Kubernetes checked without a container engine, and held to
the configuration that celeryconfig.py reads and docs/configuration.md documents."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

import celeryconfig
from devkit.docs import (
    CONFIGURATION,
    METRICS_BEGIN,
    METRICS_END,
    MONITORING,
    TABLE_BEGIN,
    TABLE_END,
    settings_table,
)
from tasks.ops.metrics import metrics_table

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SETTINGS = set(celeryconfig.Settings.model_fields)
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_hadolint_passes_the_dockerfile() -> None:
    result = run(str(BIN / "hadolint"), "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_passes_the_compose_login_script() -> None:
    result = run(str(BIN / "shellcheck"), "deploy/compose/logins.sh")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_files_follow_the_compose_specification() -> None:
    result = run(
        str(BIN / "check-jsonschema"),
        "--builtin-schema",
        "vendor.compose-spec",
        "docker-compose.yml",
        "docker-compose.exercise.yml",
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_manifests_validate() -> None:
    result = run(str(BIN / "kubernetes-validate"), "--strict", *map(str, MANIFESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    # Only KEDA's custom resources go without a schema, and they say so.
    skipped = [line for line in result.stdout.splitlines() if "Couldn't find schema" in line]
    assert skipped and all("keda.sh" in line for line in skipped)


def pipeline_services() -> dict[str, dict]:
    return {name: s for name, s in COMPOSE["services"].items() if s.get("image") == "login-pipeline:latest"}


def test_compose_sets_only_settings_that_celeryconfig_reads() -> None:
    for name, service in pipeline_services().items():
        unknown = set(service["environment"]) - SETTINGS - {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        assert not unknown, f"{name}: {unknown}"


@pytest.mark.parametrize("manifest", [m for m in MANIFESTS if m.name == "configmap.yaml"], ids=lambda m: m.name)
def test_the_configmap_sets_only_known_settings(manifest: Path) -> None:
    data = yaml.safe_load(manifest.read_text())["data"]
    assert set(data) <= SETTINGS
    celeryconfig.Settings(**data)  # every value is one its setting accepts


# The settings docs/performance.md measured: a deployment runs them as measured.
TUNING = ("BATCH_SIZE", "FETCH_INTERVAL", "FETCH_RECEIVERS", "FETCHES_PER_TICK", "SOURCE_VISIBILITY_TIMEOUT",
          "TASK_VISIBILITY_TIMEOUT", "WORKER_CONCURRENCY")  # fmt: skip


def test_the_configmap_runs_the_tuned_defaults() -> None:
    data = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "configmap.yaml").read_text())["data"]
    fields = celeryconfig.Settings.model_fields
    assert set(TUNING) <= set(data)
    assert {name: celeryconfig.Settings(**data).model_dump()[name] for name in TUNING} == {
        name: fields[name].default for name in TUNING
    }


def test_compose_runs_the_documented_commands_and_ports() -> None:
    services = pipeline_services()
    assert services["worker"]["command"][:4] == ["celery", "-A", "tasks", "worker"]
    assert services["beat"]["command"][:4] == ["celery", "-A", "tasks", "beat"]
    assert services["flower"]["command"][:4] == ["celery", "-A", "tasks", "flower"]
    flower_port = services["flower"]["environment"]["FLOWER_PORT"]
    # Published on the loopback only, on a host port a user may move off a taken one.
    assert services["flower"]["ports"] == [f"127.0.0.1:${{FLOWER_HOST_PORT:-{flower_port}}}:{flower_port}"]
    assert COMPOSE["services"]["localstack"]["ports"] == ["127.0.0.1:${LOCALSTACK_HOST_PORT:-4566}:4566"]
    assert COMPOSE["services"]["postgres"]["ports"] == ["127.0.0.1:${POSTGRES_HOST_PORT:-5432}:5432"]
    for name in ("worker", "beat", "flower"):
        assert services[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"


def test_the_configuration_table_is_the_one_celeryconfig_declares() -> None:
    """Names, defaults, ranges and meanings cannot drift: the table is made from celeryconfig."""
    doc = CONFIGURATION.read_text()
    block = doc.partition(TABLE_BEGIN)[2].partition(TABLE_END)[0].strip()
    assert block == settings_table(), "docs/configuration.md's settings table is stale: run `make docs`"


def test_the_metrics_table_is_the_one_the_collectors_make() -> None:
    """Metric names, types, labels and meanings cannot drift: the list is made from the specs."""
    doc = MONITORING.read_text()
    block = doc.partition(METRICS_BEGIN)[2].partition(METRICS_END)[0].strip()
    assert block == metrics_table(), "docs/monitoring.md's metrics table is stale: run `make docs`"


def test_every_module_the_docs_name_exists() -> None:
    """A move (the layout of issue 13) leaves no reader sent to a file that is gone."""
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "deploy").rglob("*.md"))]
    named = {path for doc in documents for path in re.findall(r"tasks/[a-z_/]+\.py", doc.read_text())}
    assert named and not {path for path in named if not (ROOT / path).exists()}


def test_every_setting_read_from_the_environment_is_declared() -> None:
    """Only the Settings model reads the environment, so the table lists every variable."""
    for path in (ROOT / "celeryconfig.py", ROOT / "flowerconfig.py", *sorted((ROOT / "tasks").rglob("*.py"))):
        if path.parts[-3:-1] != ("tasks", "dev"):  # the development tools set up their own children
            assert "os.environ.get(" not in path.read_text() and "os.getenv(" not in path.read_text(), path


# --- The image: runtime only ---------------------------------------------------------------

DEVELOPMENT_ONLY = ("dev", "tests", "docs", "data", ".venv", ".stack", ".git", "requirements-dev.txt")


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def in_build_context(path: str) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents decides."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            rules.append((negated, _pattern(line.lstrip("!").strip("/"))))
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for negated, regex in rules:
        if any(regex.match(c) for c in candidates):
            included = negated
    return included


def test_the_dockerfile_copies_no_development_code() -> None:
    steps = dockerfile_instructions()
    copied = [source for kind, args in steps if kind == "COPY" for source in args.split()[:-1]]
    assert copied and "." not in copied and "./" not in copied, "copy named runtime files, never the whole context"
    for source in copied:
        assert not any(source.rstrip("/").startswith(dev) for dev in DEVELOPMENT_ONLY), source
    runs = [args for kind, args in steps if kind == "RUN"]
    requirements = next(i for i, r in enumerate(runs) if "-r requirements.txt" in r)
    project = next(i for i, r in enumerate(runs) if "--no-deps ." in r)
    assert requirements < project, "the pinned requirements first, then the project without dependencies"
    assert not any("requirements-dev" in r for r in runs)
    assert ("USER", "10001:10001") in steps


def test_the_dockerignore_keeps_development_files_out_of_the_build_context() -> None:
    for path in (
        "dev/devkit/seed.py",
        "dev/devkit/stack.py",
        "tests/test_deploy.py",
        "docs/privacy.md",
        "data/sample_data.json",
        ".venv/bin/python",
        ".stack/masking.keys",
        ".git/HEAD",
        "requirements-dev.txt",
        "tasks/__pycache__/celery.cpython-311.pyc",
        "deploy/aws/iam-worker.json",
    ):
        assert not in_build_context(path), path
    for kind, args in dockerfile_instructions():
        if kind == "COPY":
            for source in args.split()[:-1]:
                assert in_build_context(source.rstrip("/")), f"the Dockerfile copies {source}, which is ignored"
    for path in ("tasks/celery.py", "tasks/pipeline/store.py", "tasks/ops/provision.py", "init.sql"):
        assert in_build_context(path), path


def test_compose_init_only_provisions_and_nothing_runs_development_commands() -> None:
    services = pipeline_services()
    assert services["init"]["command"] == ["python", "-m", "tasks", "init"]
    development = ("seed", "bench", "stack up", "tasks run")
    for name, service in services.items():
        command = " ".join(service.get("command", []))
        assert not any(word in command for word in development), f"{name} runs a development command: {command}"


# --- Dependencies ------------------------------------------------------------------------


def declared_packages() -> set[str]:
    """The packages pyproject.toml declares: runtime, embedded stack and development."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [
        *project["dependencies"],
        *(r for group in project["optional-dependencies"].values() for r in group),
    ]
    return {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_docs_say_why_each_dependency_is_there() -> None:
    table = (ROOT / "docs" / "dependencies.md").read_text()
    names = {
        n.strip().lower() for row in table.splitlines() if row.startswith("| ") for n in row.split("|")[1].split(",")
    }
    names = {n.replace(" (dev)", "").replace(" (stack)", "") for n in names}
    missing = declared_packages() - names
    assert not missing, f"not in docs/dependencies.md's table: {sorted(missing)}"
    assert "pip-audit --strict -r requirements.txt" in table


# --- Retention of raw PII in queues ------------------------------------------------------


def provisioned_queues(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, str]]:
    """The attributes `init` sets on each queue, with SQS replaced by a recorder."""
    from tasks.ops import provision

    queues: dict[str, dict[str, str]] = {}

    def create(name: str, attributes: dict[str, str]) -> str:
        queues[name] = attributes
        return f"https://sqs.example/000000000000/{name}"

    monkeypatch.setattr(provision, "_create_queue", create)
    monkeypatch.setattr(provision, "_arn", lambda url: "arn:aws:sqs:eu-west-1:000000000000:" + url.rsplit("/", 1)[1])
    provision.create_queues()
    return queues


def test_queues_holding_raw_bodies_keep_them_no_longer_than_their_purpose(monkeypatch: pytest.MonkeyPatch) -> None:
    days = {name: int(a["MessageRetentionPeriod"]) / 86400 for name, a in provisioned_queues(monkeypatch).items()}
    assert days == {
        "login-queue": 14,  # the producer's queue: the outage budget
        "login-queue-dlq": 14,  # at least its source's (SQS keeps the enqueue time)
        "login-pipeline-fetch": 1,
        "login-pipeline-batches": 1,  # whole batches of raw bodies, handled in seconds
        "login-pipeline-batches-dlq": 4,
    }
    assert days["login-queue-dlq"] >= days["login-queue"]
    assert days["login-pipeline-batches-dlq"] >= days["login-pipeline-batches"]


def test_the_aws_readme_states_the_retention_that_init_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (ROOT / "deploy" / "aws" / "README.md").read_text()
    rows = {}
    for row in readme.splitlines():
        cells = [c.strip() for c in row.strip("|").split("|")]
        if row.startswith("| `") and len(cells) == 4:
            for name in re.findall(r"`([a-z-]+)`", cells[0]):
                rows[name] = cells[3]
    for name, attributes in provisioned_queues(monkeypatch).items():
        n = int(attributes["MessageRetentionPeriod"]) // 86400
        assert rows[name] == f"{n} day{'s' if n > 1 else ''}", name
        assert f'MessageRetentionPeriod\\": \\"$(({n} * DAY))' in readme or f"=$(({n} * DAY))" in readme


# --- IAM: the least each process needs ----------------------------------------------------
# The calls below are read from the code: tasks/pipeline (source, dead letters), kombu's SQS
# transport and its SNS fanout (task queues, per-process queues, topics), tasks/ops. A small
# evaluator (explicit deny wins; StringEquals/StringLike/ArnLike conditions; policy
# variables) answers them from deploy/aws/iam-*.json.

ACCOUNT, OTHER_ACCOUNT = "123456789012", "210987654321"
POLICIES = {p.stem.removeprefix("iam-"): p for p in sorted((ROOT / "deploy" / "aws").glob("iam-*.json"))}
DURABLE_QUEUES = ("login-queue", "login-queue-dlq", "login-pipeline-fetch", "login-pipeline-batches",
                  "login-pipeline-batches-dlq")  # fmt: skip
# Per-process queues, as kombu names them under CELERY_QUEUE_PREFIX (tasks/ops/sweep.py).
EVENT_QUEUE = "login-pipeline-celeryev-0b6f8a7e-5b3c-4e0a-9d0b-2f1c3e4d5a6b"
PIDBOX_QUEUE = "login-pipeline-celery_login-pipeline-worker-7d9f-celery-pidbox"
REPLY_QUEUE = "login-pipeline-8c1d2e3f-aaaa-bbbb-cccc-0123456789ab-reply-celery-pidbox"
EVENT_TOPIC, PIDBOX_TOPIC = "login-pipeline-celeryev", "login-pipeline-celery-pidbox"


def sqs(name: str, account: str = ACCOUNT) -> str:
    return f"arn:aws:sqs:eu-west-1:{account}:{name}"


def sns(name: str) -> str:
    return f"arn:aws:sns:eu-west-1:{ACCOUNT}:{name}"


def subscription(topic: str, endpoint: str, protocol: str = "sqs") -> tuple[str, str, dict[str, str]]:
    return ("sns:Subscribe", sns(topic), {"sns:Protocol": protocol, "sns:Endpoint": endpoint})


def _glob(pattern: str, value: str, case: bool = True) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, 0 if case else re.IGNORECASE) is not None


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def _condition_holds(condition: dict, context: dict[str, str]) -> bool:
    for operator, tests in condition.items():
        for key, wanted in tests.items():
            if key not in context:
                return False
            values = [v.replace("${aws:PrincipalAccount}", ACCOUNT) for v in _as_list(wanted)]
            if operator == "StringEquals":
                ok = context[key] in values
            elif operator in ("StringLike", "ArnLike"):
                ok = any(_glob(v, context[key]) for v in values)
            else:
                raise AssertionError(f"the test's evaluator does not know {operator}: teach it")
            if not ok:
                return False
    return True


def allowed(policy: str, action: str, resource: str, context: dict[str, str] | None = None) -> bool:
    document = json.loads(POLICIES[policy].read_text())
    decision = False
    for statement in document["Statement"]:
        assert {"NotAction", "NotResource", "Principal"}.isdisjoint(statement)
        if not any(_glob(a, action, case=False) for a in _as_list(statement["Action"])):
            continue
        if not any(_glob(r, resource) for r in _as_list(statement["Resource"])):
            continue
        if not _condition_holds(statement.get("Condition", {}), context or {}):
            continue
        if statement["Effect"] == "Deny":
            return False
        decision = True
    return decision


OWN_QUEUE_CALLS = ("sqs:CreateQueue", "sqs:DeleteQueue", "sqs:GetQueueUrl", "sqs:GetQueueAttributes",
                   "sqs:ReceiveMessage", "sqs:DeleteMessage")  # fmt: skip
NEEDS = {
    "worker": [
        *[(a, sqs("login-queue")) for a in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueUrl")],
        *[(a, sqs("login-queue-dlq")) for a in ("sqs:SendMessage", "sqs:GetQueueUrl")],
        *[
            (a, sqs(q))
            for q in ("login-pipeline-fetch", "login-pipeline-batches")
            for a in (
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:ChangeMessageVisibility",
                "sqs:GetQueueAttributes",
            )
        ],
        ("sqs:SendMessage", sqs("login-pipeline-batches")),
        *[
            (a, sqs(q))
            for q in (EVENT_QUEUE, PIDBOX_QUEUE, REPLY_QUEUE)
            for a in (*OWN_QUEUE_CALLS, "sqs:SetQueueAttributes")
        ],
        ("sqs:SendMessage", sqs(REPLY_QUEUE)),
        ("sqs:ListQueues", "*"),
        *[
            (a, sns(t))
            for t in (EVENT_TOPIC, PIDBOX_TOPIC)
            for a in ("sns:CreateTopic", "sns:TagResource", "sns:Publish", "sns:ListSubscriptionsByTopic")
        ],
        subscription(EVENT_TOPIC, sqs(EVENT_QUEUE)),
        subscription(PIDBOX_TOPIC, sqs(PIDBOX_QUEUE)),
        ("sns:Unsubscribe", "*"),
    ],
    "beat": [
        ("sqs:SendMessage", sqs("login-pipeline-fetch")),
        ("sqs:GetQueueAttributes", sqs("login-pipeline-fetch")),
        ("sqs:ListQueues", "*"),
    ],
    "flower": [
        *[(a, sqs(q)) for q in DURABLE_QUEUES for a in ("sqs:GetQueueUrl", "sqs:GetQueueAttributes")],  # depths
        *[(a, sqs(q)) for q in (EVENT_QUEUE, REPLY_QUEUE) for a in OWN_QUEUE_CALLS],
        ("sqs:SetQueueAttributes", sqs(EVENT_QUEUE)),
        ("sqs:ListQueues", "*"),
        *[(a, sns(t)) for t in (EVENT_TOPIC, PIDBOX_TOPIC) for a in ("sns:CreateTopic", "sns:TagResource")],
        ("sns:ListSubscriptionsByTopic", sns(EVENT_TOPIC)),
        subscription(EVENT_TOPIC, sqs(EVENT_QUEUE)),
        ("sns:Unsubscribe", "*"),
        ("sns:Publish", sns(PIDBOX_TOPIC)),  # inspect and enable_events broadcasts
    ],
    "init": [
        (a, sqs(q))
        for q in DURABLE_QUEUES
        for a in ("sqs:CreateQueue", "sqs:SetQueueAttributes", "sqs:GetQueueAttributes")
    ],
    "keda": [("sqs:GetQueueAttributes", sqs(q)) for q in ("login-queue", "login-pipeline-batches")],
    "operator": [
        *[(a, sqs(q)) for q in DURABLE_QUEUES for a in ("sqs:GetQueueUrl", "sqs:GetQueueAttributes")],
        *[
            (a, sqs(q))
            for q in ("login-queue-dlq", "login-pipeline-batches-dlq")  # redrive, redrive --batches
            for a in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility")
        ],
        ("sqs:SendMessage", sqs("login-queue")),
        ("sqs:SendMessage", sqs("login-pipeline-batches")),
        ("sqs:SendMessage", sqs("login-pipeline-batches-dlq")),  # forget: a batch without the forgotten user's events
        *[(a, sqs(q)) for q in (EVENT_QUEUE, REPLY_QUEUE) for a in ("sqs:GetQueueAttributes", "sqs:DeleteQueue")],
        *[("sqs:GetQueueUrl", sqs(q)) for q in (EVENT_QUEUE, PIDBOX_QUEUE, REPLY_QUEUE)],  # sweep's existence check
        ("sqs:ListQueues", "*"),
        ("sns:ListSubscriptions", "*"),
        ("sns:Unsubscribe", "*"),
    ],
}


def _calls(call: tuple) -> tuple[str, str, dict[str, str]]:
    return call if len(call) == 3 else (*call, {})


def test_each_process_has_its_own_policy() -> None:
    assert set(POLICIES) == set(NEEDS)


@pytest.mark.parametrize("process", sorted(NEEDS))
def test_each_process_may_make_the_calls_its_code_makes(process: str) -> None:
    missing = [c for c in map(_calls, NEEDS[process]) if not allowed(process, *c)]
    assert not missing, f"{process} would be denied: {missing}"


@pytest.mark.parametrize("process", sorted(NEEDS))
def test_each_process_may_make_no_call_beyond_them(process: str) -> None:
    """Every action a policy names, on every resource it could touch, is one the process needs."""
    needed = {(a.lower(), r) for a, r, _ in map(_calls, NEEDS[process])}
    resourceless = {a for a, r in needed if r == "*"}  # ListQueues, Unsubscribe, ListSubscriptions
    probes = [sqs(q) for q in (*DURABLE_QUEUES, EVENT_QUEUE, PIDBOX_QUEUE, REPLY_QUEUE)]
    probes += [sns(t) for t in (EVENT_TOPIC, PIDBOX_TOPIC)]
    statements = json.loads(POLICIES[process].read_text())["Statement"]
    actions = {a.lower() for s in statements for a in _as_list(s["Action"])} - resourceless
    endpoints = [{"sns:Protocol": "sqs", "sns:Endpoint": sqs(q)} for q in (EVENT_QUEUE, PIDBOX_QUEUE)]
    surplus = [
        (a, r)
        for a in sorted(actions)
        for r in probes
        if (a, r) not in needed and any(allowed(process, a, r, context) for context in endpoints)
    ]
    assert not surplus, f"{process} may do more than it needs: {surplus}"


@pytest.mark.parametrize("process", sorted(set(NEEDS) - {"init"}))
def test_no_process_but_init_can_create_change_purge_or_delete_a_durable_queue(process: str) -> None:
    for queue in DURABLE_QUEUES:
        for action in ("sqs:CreateQueue", "sqs:SetQueueAttributes", "sqs:DeleteQueue", "sqs:PurgeQueue",
                       "sqs:AddPermission", "sqs:TagQueue"):  # fmt: skip
            assert not allowed(process, action, sqs(queue)), (process, action, queue)
    durable = {f"arn:aws:sqs:*:*:{q}" for q in DURABLE_QUEUES}
    statements = json.loads(POLICIES[process].read_text())["Statement"]
    denies = [s for s in statements if s["Effect"] == "Deny" and set(_as_list(s["Resource"])) >= durable]
    assert denies, f"{process}: an explicit deny keeps any later, broader grant from reopening them"


def test_init_only_creates_and_configures_the_durable_queues() -> None:
    for queue in (EVENT_QUEUE, PIDBOX_QUEUE, "login-pipeline-anything", "other-queue"):
        assert not allowed("init", "sqs:CreateQueue", sqs(queue))
    for action in ("sqs:DeleteQueue", "sqs:ReceiveMessage", "sqs:SendMessage", "sqs:PurgeQueue", "sns:CreateTopic"):
        assert not any(allowed("init", action, sqs(q)) for q in DURABLE_QUEUES), action


@pytest.mark.parametrize("process", ["worker", "flower"])
def test_subscriptions_go_only_to_our_own_per_process_queues_over_sqs(process: str) -> None:
    assert allowed(process, *subscription(EVENT_TOPIC, sqs(EVENT_QUEUE)))
    refused = [
        subscription(EVENT_TOPIC, sqs(EVENT_QUEUE), protocol="https"),
        subscription(EVENT_TOPIC, "https://attacker.example/collect", protocol="https"),
        subscription(EVENT_TOPIC, "someone@example.com", protocol="email"),
        subscription(EVENT_TOPIC, sqs(EVENT_QUEUE, account=OTHER_ACCOUNT)),  # another account's queue
        ("sns:Subscribe", sns(EVENT_TOPIC), {"sns:Protocol": "sqs"}),  # no endpoint: no grant
        *[subscription(t, sqs(q)) for t in (EVENT_TOPIC, PIDBOX_TOPIC) for q in DURABLE_QUEUES],
        subscription("some-other-topic", sqs(EVENT_QUEUE)),
    ]
    for call in refused:
        assert not allowed(process, *call), call


def test_beat_only_publishes_fetch_tasks() -> None:
    for action, resource in [("sqs:SendMessage", sqs(q)) for q in DURABLE_QUEUES if q != "login-pipeline-fetch"] + [
        ("sqs:ReceiveMessage", sqs("login-queue")),
        ("sqs:CreateQueue", sqs(EVENT_QUEUE)),
        ("sns:Publish", sns(EVENT_TOPIC)),
        ("sns:Subscribe", sns(EVENT_TOPIC)),
    ]:
        assert not allowed("beat", action, resource, {"sns:Protocol": "sqs", "sns:Endpoint": sqs(EVENT_QUEUE)})


def test_flower_reads_no_pipeline_message_and_sends_no_task() -> None:
    for queue in DURABLE_QUEUES:
        assert allowed("flower", "sqs:GetQueueAttributes", sqs(queue)), "queue depths for its Broker page"
        for action in ("sqs:SendMessage", "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"):
            assert not allowed("flower", action, sqs(queue)), (action, queue)
    assert not allowed("flower", "sns:Publish", sns(EVENT_TOPIC)), "Flower listens to events, it sends none"


def test_the_iam_policies_pass_parliament() -> None:
    from parliament import analyze_policy_string

    for process, path in POLICIES.items():
        findings = analyze_policy_string(path.read_text(), include_community_auditors=True).findings
        issues = {f.issue for f in findings}
        # SetQueueAttributes can set a queue's policy: only init (durable queues) and the
        # per-process queues that kombu subscribes to SNS (worker, Flower) carry it.
        if process in ("init", "worker", "flower"):
            issues.discard("PERMISSIONS_MANAGEMENT_ACTIONS")
        assert not issues, f"{path.name}: {[(f.issue, f.detail) for f in findings]}"


def test_the_aws_readme_explains_every_grant() -> None:
    readme = (ROOT / "deploy" / "aws" / "README.md").read_text()
    for path in POLICIES.values():
        assert f"`{path.name}`" in readme, path.name
        for statement in json.loads(path.read_text())["Statement"]:
            assert f"`{statement['Sid']}`" in readme, f"{path.name}: statement {statement['Sid']} is not explained"


# --- Kubernetes ----------------------------------------------------------------------------


def k8s_objects() -> list[dict]:
    return [doc for m in MANIFESTS for doc in yaml.safe_load_all(m.read_text()) if doc]


def workloads() -> dict[str, dict]:
    """Deployments and Jobs by component: their pod templates."""
    found = {}
    for obj in k8s_objects():
        if obj["kind"] in ("Deployment", "Job"):
            found[obj["metadata"]["labels"]["app.kubernetes.io/component"]] = obj["spec"]["template"]
    return found


def test_each_process_has_its_own_service_account_and_iam_role() -> None:
    accounts = {o["metadata"]["name"]: o for o in k8s_objects() if o["kind"] == "ServiceAccount"}
    used = set()
    for component, template in workloads().items():
        name = template["spec"]["serviceAccountName"]
        assert name == f"login-pipeline-{component}", component
        role = accounts[name]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        assert role.endswith(f":role/login-pipeline-{component}") and component in POLICIES, component
        assert accounts[name]["automountServiceAccountToken"] is False, name
        used.add(name)
    assert used == set(accounts), "no account shared, none unused"


# --- Database logins: never the superuser, except init ------------------------------------

LOGINS = {"worker": "login_pipeline_worker", "flower": "login_pipeline_metrics"}
GRANTED = {"login_pipeline_worker": "login_pipeline_writer", "login_pipeline_metrics": "login_metrics"}


def db_user(url: str) -> str:
    return urlsplit(url).username or ""


def database_urls(environment: dict[str, str]) -> set[str]:
    """Every database URL a process gets (DATABASE_URL, or a collector's own, e.g. METRICS_DATABASE_URL)."""
    return {value for name, value in environment.items() if name.endswith("DATABASE_URL")}


def test_compose_logs_no_pipeline_process_in_as_the_superuser() -> None:
    superuser = COMPOSE["services"]["postgres"]["environment"].get("POSTGRES_USER", "postgres")
    users = {name: {db_user(u) for u in database_urls(s["environment"])} for name, s in pipeline_services().items()}
    assert users.pop("init") == {superuser}, "init applies init.sql"
    assert users.pop("beat") == set(), "beat never touches the database"
    assert users == {name: {login} for name, login in LOGINS.items()}
    assert "DATABASE_URL" not in COMPOSE["x-pipeline"]["environment"], "no URL shared by every service"
    for name, service in pipeline_services().items():
        assert ("MASKING_KEYS" in service["environment"]) == (name == "worker"), "only the worker masks"


def test_compose_makes_the_logins_after_the_roles_with_passwords_from_the_environment() -> None:
    postgres = COMPOSE["services"]["postgres"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in postgres["volumes"]}
    assert mounts["./init.sql"] < mounts["./deploy/compose/logins.sh"], "initdb runs its scripts in name order"
    script = (ROOT / "deploy" / "compose" / "logins.sh").read_text()
    made = dict(re.findall(r"CREATE ROLE (\w+) LOGIN PASSWORD :'\w+' IN ROLE (\w+);", script))
    assert made == GRANTED
    sql = script[script.index("<<'SQL'") :]
    assert not re.search(r"\b(SUPERUSER|CREATEROLE|CREATEDB|BYPASSRLS|REPLICATION)\b", sql, re.IGNORECASE)
    for variable in ("WORKER_DB_PASSWORD", "METRICS_DB_PASSWORD", "POSTGRES_PASSWORD"):
        assert postgres["environment"][variable].startswith(f"${{{variable}:?"), f"{variable} comes from the env"


def test_kubernetes_gives_each_pod_its_own_secret_and_only_init_the_administrator() -> None:
    secrets = {o["metadata"]["name"]: o["stringData"] for o in k8s_objects() if o["kind"] == "Secret"}
    for component, template in workloads().items():
        spec = template["spec"]
        container = spec["containers"][0]
        refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env", []) if "valueFrom" in e}
        refs |= {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
        refs |= {s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s}
        if component == "beat":
            assert not refs and not [e for e in container.get("env", []) if e["name"].endswith("DATABASE_URL")]
            continue
        assert refs == {f"login-pipeline-{component}"}, (component, refs)
        users = {db_user(url) for url in database_urls(secrets[f"login-pipeline-{component}"])}
        if component == "init":
            assert len(users) == 1 and not users & set(GRANTED), "init applies the schema as the administrator"
        else:
            assert users == {LOGINS[component]}, component
    assert set(workloads()) == {"worker", "beat", "flower", "init"}


# --- Pod security and the network -----------------------------------------------------------


@pytest.mark.parametrize("component", ["worker", "beat", "flower", "init"])
def test_every_pod_runs_unprivileged_on_a_read_only_root(component: str) -> None:
    spec = workloads()[component]["spec"]
    assert spec["automountServiceAccountToken"] is False, "nothing here calls the Kubernetes API"
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 10001 and pod["runAsGroup"] == 10001
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
    tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    for container in spec["containers"] + spec.get("initContainers", []):
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
        assert security["capabilities"] == {"drop": ["ALL"]}, "drop all, add none"
        assert not security.get("privileged") and security.get("runAsUser", 10001) == 10001
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts.get("/tmp") in tmp_volumes, "/tmp (STACK_DIR) is the only writable place"


def test_what_the_processes_write_lies_under_tmp() -> None:
    config = next(o for o in k8s_objects() if o["kind"] == "ConfigMap")["data"]
    assert config["STACK_DIR"] == "/tmp" and config["WORKER_HEALTH_FILE"].startswith("/tmp/")
    beat = workloads()["beat"]["spec"]["containers"][0]["command"]
    assert beat[beat.index("--schedule") + 1].startswith("/tmp/")
    keys = next(v for v in workloads()["worker"]["spec"]["volumes"] if v["name"] == "masking-keys")
    assert keys["secret"]["defaultMode"] == 0o440


def _selects(selector: dict, labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", "the test's selector knows In only"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def _ports(rules: list[dict]) -> set[tuple[str, int]]:
    return {(p.get("protocol", "TCP"), p["port"]) for rule in rules for p in rule.get("ports", [])}


def network(component: str) -> tuple[set, set, list[dict], set[str]]:
    """Ingress ports, egress ports, ingress rules and policy types that apply to a component's pods."""
    labels = workloads()[component]["metadata"]["labels"]
    policies = [o["spec"] for o in k8s_objects() if o["kind"] == "NetworkPolicy"]
    applying = [p for p in policies if _selects(p["podSelector"], labels)]
    types = {t for p in applying for t in p["policyTypes"]}
    ingress = [r for p in applying for r in p.get("ingress", [])]
    egress = [r for p in applying for r in p.get("egress", [])]
    return _ports(ingress), _ports(egress), ingress, types


@pytest.mark.parametrize("component", ["worker", "beat", "flower", "init"])
def test_network_policy_denies_by_default_and_opens_only_dns_https_and_postgresql(component: str) -> None:
    ingress, egress, ingress_rules, types = network(component)
    assert types == {"Ingress", "Egress"}, "both directions are default-deny for every pipeline pod"
    has_database = component != "beat"
    expected = {("UDP", 53), ("TCP", 53), ("TCP", 443)} | ({("TCP", 5432)} if has_database else set())
    assert egress == expected, component
    if component == "flower":
        port = next(p["containerPort"] for p in workloads()["flower"]["spec"]["containers"][0]["ports"])
        assert ingress == {("TCP", port)}
        sources = [peer for rule in ingress_rules for peer in rule["from"]]
        assert sources and all("namespaceSelector" in s and "ipBlock" not in s for s in sources), "Prometheus only"
    else:
        assert not ingress_rules, f"nothing connects to {component}"


def test_flower_is_reached_only_through_its_cluster_ip_service() -> None:
    services = [o for o in k8s_objects() if o["kind"] == "Service"]
    assert [s["metadata"]["name"] for s in services] == ["login-pipeline-flower"]
    assert services[0]["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert not [o for o in k8s_objects() if o["kind"] == "Ingress"], "an Ingress needs its own NetworkPolicy rule"


# --- docs/privacy.md ---------------------------------------------------------------------------


def test_privacy_doc_says_where_raw_pii_can_rest_who_can_read_it_and_how_long(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = (ROOT / "docs" / "privacy.md").read_text()
    section = doc[doc.index("## Where raw PII can rest, who can read it, for how long") :]
    rows = [r for r in section.splitlines() if r.startswith("| ") and "---" not in r][1:]

    def row(where: str) -> str:
        found = [r for r in rows if r.split("|")[1].strip().startswith(where)]
        assert len(found) == 1, f"one row for {where}"
        return found[0]

    places = ("`login-queue` ", "`login-queue-dlq`", "Celery's batch queue", "the batch dead-letter queue",
              "worker process memory", "logs", "Flower", "PostgreSQL", "`user_logins`", "`unmask` output",
              "bench and test")  # fmt: skip
    for where in places:
        row(where)
    # The retention each row states is the one `init` sets.
    days = {n: int(a["MessageRetentionPeriod"]) // 86400 for n, a in provisioned_queues(monkeypatch).items()}
    for where, queue in (("`login-queue` ", "login-queue"), ("`login-queue-dlq`", "login-queue-dlq"),
                         ("Celery's batch queue", "login-pipeline-batches"),
                         ("the batch dead-letter queue", "login-pipeline-batches-dlq")):  # fmt: skip
        assert f"{days[queue]} day" in row(where).split("|")[4], queue
    assert "DEAD_LETTER_KEEP_BODY=false" in row("`login-queue-dlq`")
    assert "`RETENTION_DAYS`" in row("`user_logins`").split("|")[4] and "`forget`" in row("`user_logins`")
    assert "`botocore` loggers" in row("logs") and "at DEBUG" in row("logs")
    assert "An `hmac` key is as sensitive as a `siv` key" in doc


def test_the_installed_package_carries_every_layer(tmp_path: Path) -> None:
    """A non-editable install (the image's `pip install --no-deps .`) has every layer."""
    result = run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), str(ROOT))
    assert result.returncode == 0, result.stderr[-2000:]
    [wheel] = tmp_path.glob("login_pipeline-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for layer in ("pipeline", "broker", "ops"):
        modules = {f"tasks/{layer}/{p.name}" for p in (ROOT / "tasks" / layer).glob("*.py")}
        assert modules <= names, sorted(modules - names)
    assert {"celeryconfig.py", "flowerconfig.py", "tasks/celery.py", "tasks/batch.py"} <= names
