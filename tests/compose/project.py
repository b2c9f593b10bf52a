"""The shipped docker-compose.yml run on podman, the way `docker compose up` runs it.

podman-compose (PyPI) runs the file; an override file maps the official images to the stand-ins
(tests/compose/standins.py) and nothing else. Debian 12's podman (4.3) lacks two things Docker
Compose does for it, so this module does them, from the file's own declarations:
- it runs each health check at its interval, as systemd's timer does for podman where systemd
  runs (these machines have none), and
- it starts the services one at a time in the order of `depends_on`, each once its dependencies
  meet their condition (`service_healthy`, `service_completed_successfully`): podman-compose
  skips health conditions on podman before 4.6, and starts a dependency again through
  `--requires`, which would run the one-shot `init` twice.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.compose import standins

ROOT = standins.ROOT
PIPELINE_SERVICES = ("init", "worker", "beat", "flower")
PORTS = ("LOCALSTACK_HOST_PORT", "POSTGRES_HOST_PORT", "FLOWER_HOST_PORT")


def seconds(duration: str) -> float:
    """Compose's durations as this file writes them: '3s', '90s', '1m'."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in ("ms", "s", "m", "h"):
        if duration.endswith(unit):
            return float(duration[: -len(unit)]) * units[unit]
    return float(duration)


class Project:
    """One compose project: a name of its own, free published ports, fresh secrets (written by
    deploy/compose/env.py, as `make compose-up` writes them) and a folder for its files."""

    def __init__(self, name: str, ports: dict[str, int]) -> None:
        self.name = name
        self.folder = Path(tempfile.mkdtemp(prefix=f"{name}-"))
        self.env_file = self.folder / ".env"
        subprocess.run([sys.executable, str(ROOT / "deploy/compose/env.py"), str(self.env_file)], check=True)
        self.secrets = dict(
            line.split("=", 1) for line in self.env_file.read_text().splitlines() if line and not line.startswith("#")
        )
        self.ports = ports
        self.override = self.folder / "standins.yml"
        self.config: dict[str, Any] = {}

    def environment(self) -> dict[str, str]:
        return {**standins.environment(), **self.secrets, **{k: str(v) for k, v in self.ports.items()}}

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [
            str(Path(sys.executable).parent / "podman-compose"),
            "--project-name",
            self.name,
            "--env-file",
            str(self.env_file),
            "-f",
            str(ROOT / "docker-compose.yml"),
            "-f",
            str(self.override),
            *args,
        ]
        result = subprocess.run(
            command, cwd=ROOT, env=self.environment(), capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(f"podman-compose {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def prepare(self, images: dict[str, str], pipeline_image: str) -> None:
        """The override file: each official image name mapped to its stand-in, the pipeline's
        image to the one built from this checkout. Nothing else of the shipped file changes."""
        shipped = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
        services: dict[str, dict[str, str]] = {}
        for name, service in shipped["services"].items():
            if service.get("image") in images:
                services[name] = {"image": images[service["image"]]}
            elif name in PIPELINE_SERVICES:
                services[name] = {"image": pipeline_image}
        self.override.write_text(yaml.safe_dump({"services": services}))
        self.config = yaml.safe_load(self.compose("config").stdout)

    def container(self, service: str) -> str:
        return f"{self.name}_{service}_1"

    def inspect(self, service: str) -> dict[str, Any]:
        out = standins.podman("inspect", self.container(service)).stdout
        return json.loads(out)[0]

    def healthy(self, service: str) -> bool:
        """Run the service's health check once, as systemd's timer would."""
        return standins.podman("healthcheck", "run", self.container(service), check=False).returncode == 0

    def wait_healthy(self, service: str) -> float:
        """Run the health check at its interval until it passes; the seconds it took."""
        check = self.config["services"][service]["healthcheck"]
        interval = seconds(check.get("interval", "30s"))
        bound = seconds(check.get("start_period", "0s")) + interval * int(check.get("retries", 3)) + 30
        start = time.monotonic()
        while not self.healthy(service):
            if not self.inspect(service)["State"]["Running"] or time.monotonic() - start > bound:
                logs = self.logs(service)[-3000:]
                raise AssertionError(f"{service} stopped, or not healthy within {bound:.0f} s:\n{logs}")
            time.sleep(min(interval, 2.0))
        return time.monotonic() - start

    def wait_completed(self, service: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while (state := self.inspect(service)["State"])["Status"] != "exited":
            if time.monotonic() > deadline:
                raise AssertionError(f"{service} still {state['Status']} after {timeout:.0f} s")
            time.sleep(0.5)
        assert state["ExitCode"] == 0, f"{service} exited {state['ExitCode']}:\n{self.logs(service)[-3000:]}"

    def order(self) -> Iterator[str]:
        """The services, each after everything it depends on."""
        done: set[str] = set()
        services = self.config["services"]
        while len(done) < len(services):
            ready = [s for s in services if s not in done and set(services[s].get("depends_on", {})) <= done]
            assert ready, f"depends_on has a cycle among {set(services) - done}"
            for service in ready:
                done.add(service)
                yield service

    def up(self) -> list[tuple[str, str, float]]:
        """Start every service as `docker compose up -d` does; what was waited for, in order."""
        waited: list[tuple[str, str, float]] = []
        for service in self.order():
            for dependency, rule in self.config["services"][service].get("depends_on", {}).items():
                start = time.monotonic()
                if rule["condition"] == "service_healthy":
                    self.wait_healthy(dependency)
                elif rule["condition"] == "service_completed_successfully":
                    self.wait_completed(dependency)
                waited.append((service, f"{dependency} {rule['condition']}", time.monotonic() - start))
            self.compose("up", "-d", "--no-deps", service)
        return waited

    def logs(self, service: str) -> str:
        result = standins.podman("logs", self.container(service), check=False)
        return result.stdout + result.stderr

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, networks and volumes of this project still on the machine."""
        label = f"label=io.podman.compose.project={self.name}"
        found = {
            "containers": standins.podman("ps", "-a", "--filter", label, "--format", "{{.Names}}").stdout.split(),
            "volumes": standins.podman("volume", "ls", "--filter", label, "--format", "{{.Name}}").stdout.split(),
            "networks": [
                n
                for n in standins.podman("network", "ls", "--format", "{{.Name}}").stdout.split()
                if n.startswith(f"{self.name}_")
            ],
        }
        return {kind: names for kind, names in found.items() if names}

    def remove(self) -> None:
        """Whatever `down -v` left (after a failure), by force, and the project's folder."""
        left = self.leftovers()
        if left.get("containers"):
            standins.podman("rm", "--force", "--volumes", *left["containers"], check=False)
        if left.get("volumes"):
            standins.podman("volume", "rm", "--force", *left["volumes"], check=False)
        if left.get("networks"):
            standins.podman("network", "rm", "--force", *left["networks"], check=False)
        shutil.rmtree(self.folder, ignore_errors=True)


def build_pipeline_image(python_tag: str) -> str:
    """The project's own Dockerfile, unchanged, on the python stand-in (layers cached by podman)."""
    tag = f"{standins.PREFIX}-pipeline:checkout"
    before = standins.podman("image", "inspect", "--format", "{{.Id}}", tag, check=False).stdout.strip()
    built = standins.podman("build", "--quiet", "--build-arg", f"PYTHON_IMAGE={python_tag}", "--tag", tag, str(ROOT))
    if before and before != built.stdout.strip():
        standins.podman("rmi", before, check=False)  # the last checkout's image, now untagged
    return tag
