"""The alert rules (deploy/prometheus), tested two ways.

- promtool: `check rules`, `check config` on the example scrape configuration, and
  `test rules` on login-pipeline.rules.test.yml, which must hold a case where each alert
  fires and one where it does not; every alert has a runbook section.
- A real Prometheus (Debian's server) scraping a running pipeline through Flower's
  /metrics with basic auth, evaluating the shipped rules with their durations shortened
  (tasks/dev/prometheus.py): staged faults fire their alerts, read through Prometheus's
  HTTP API, and the alerts clear after recovery; every dashboard panel's query returns data.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tasks.dev import prometheus

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


def test_every_alert_links_its_runbook_section_which_says_what_to_look_at_and_how_to_fix() -> None:
    sections = dict(re.findall(r"^## (\w+)\n(.*?)(?=^## |\Z)", RUNBOOK.read_text(), re.MULTILINE | re.DOTALL))
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["annotations"]["runbook_url"] == f"docs/runbook.md#{name.lower()}", name
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
    assert "time() - max(login_pipeline_beat_last_tick_timestamp_seconds) > 4\n" in short
    assert 'le=~"5|5\\\\.0"' in short  # the SLO's 5 s is real events' latency: unchanged
