"""A real Prometheus (Debian's `prometheus` server) for the end-to-end alert test and
`make screenshots`: its configuration, the shortened copy of the shipped rules it
evaluates, its command line, and reading its HTTP API.

The shipped rules (deploy/prometheus/login-pipeline.rules.yml) wait minutes, as an
operator wants; a test cannot. `shortened_rules` divides every duration of that file by
one factor: range selectors (`[10m]`), `for:` and the thresholds in seconds compared
with a `*_seconds` expression (`time() - max(…_timestamp_seconds) > 300`). The SLO's
own 5 s is a latency of real events and stays. The caller starts the process (its own
process group, killed after) from `command`, on a free port with its own data folder.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "login-pipeline.rules.yml"
PROMETHEUS = "/usr/bin/prometheus"
JOB = "login-pipeline"  # the job name the rules read up{} of

UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_DURATION = r"(\d+)(ms|[smhdwy])"
_RANGE = re.compile(rf"\[{_DURATION}\]")
_FOR = re.compile(rf"^(\s*for:\s*){_DURATION}\s*$", re.MULTILINE)
_SECONDS_THRESHOLD = re.compile(r"(_seconds(?:\{[^}]*\})?\)?\s*>\s*)(\d+(?:\.\d+)?)")


def seconds(amount: str, unit: str) -> float:
    return int(amount) * UNIT_SECONDS[unit]


def _short(value: float, divisor: float, floor: float) -> str:
    """A Prometheus duration: `value` seconds divided, never below `floor` seconds."""
    return f"{max(floor, value / divisor):g}s"


def shortened_rules(text: str, divisor: float, floor: float = 1.0) -> str:
    """The rules file `text` with every duration divided by `divisor` (see the module)."""
    text = _RANGE.sub(lambda m: f"[{_short(seconds(m[1], m[2]), divisor, floor * 4)}]", text)
    text = _FOR.sub(lambda m: f"{m[1]}{_short(seconds(m[2], m[3]), divisor, 0)}", text)
    return _SECONDS_THRESHOLD.sub(lambda m: f"{m[1]}{max(floor, float(m[2]) / divisor):g}", text)


@dataclass(frozen=True)
class Server:
    """One Prometheus's files and address; `command()` starts it, the rest read its API."""

    folder: Path  # its configuration, rules, password file and data, all inside
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def configure(
        self, target: str, auth: tuple[str, str], divisor: float, interval: str = "1s", rules_text: str | None = None
    ) -> None:
        """Write prometheus.yml (scraping `target`'s /metrics with basic auth every
        `interval`) and the shipped rules shortened by `divisor`."""
        self.folder.mkdir(parents=True, exist_ok=True)
        rules = self.folder / "rules.yml"
        rules.write_text(shortened_rules(rules_text or RULES.read_text(), divisor))
        password = self.folder / "flower-password"
        password.write_text(auth[1])
        password.chmod(0o600)
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "metrics_path": "/metrics",
                    "basic_auth": {"username": auth[0], "password_file": str(password)},
                    "static_configs": [{"targets": [target]}],
                }
            ],
        }
        (self.folder / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))

    def command(self) -> list[str]:
        return [
            PROMETHEUS,
            f"--config.file={self.folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]

    def api(self, path: str, **params: str) -> Any:
        """The `data` of Prometheus's answer at /api/v1/`path`; None if it did not answer."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as response:
                body = json.load(response)
        except (OSError, ValueError):
            return None
        return body.get("data") if body.get("status") == "success" else None

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector `expr` evaluates to now ([] if none, or no answer)."""
        data = self.api("query", query=expr)
        return data["result"] if data else []

    def alerts(self, state: str = "firing") -> dict[str, list[dict[str, Any]]]:
        """The alerts in `state` (firing or pending), by name, as /api/v1/alerts lists them."""
        data = self.api("alerts") or {"alerts": []}
        found: dict[str, list[dict[str, Any]]] = {}
        for alert in data["alerts"]:
            if alert["state"] == state:
                found.setdefault(alert["labels"]["alertname"], []).append(alert)
        return found

    def target_health(self) -> str | None:
        """The scrape target's health ("up", "down", "unknown"), None before its first scrape."""
        data = self.api("targets") or {"activeTargets": []}
        targets = [t for t in data["activeTargets"] if t["labels"].get("job") == JOB]
        return targets[0]["health"] if targets else None
