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
    assert "python -m tasks stack init" in services["init"]["command"][-1]
    flower_port = services["flower"]["environment"]["FLOWER_PORT"]
    assert services["flower"]["ports"] == [f"127.0.0.1:{flower_port}:{flower_port}"]
    assert COMPOSE["services"]["localstack"]["ports"] == ["127.0.0.1:4566:4566"]
    for name in ("worker", "beat", "flower"):
        assert services[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"


def test_the_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = {name for name in SETTINGS if f"`{name}`" not in readme}
    assert not missing, f"settings missing from the README's configuration table: {sorted(missing)}"
