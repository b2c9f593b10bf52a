"""`python -m tasks` takes its `dev` group from the development distribution's entry point;
a group that is missing or does not load becomes a command that says so in one line
(exit 2), and the operator's commands work on (tests/test_wheel.py sees the missing case
in a real install)."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import click
import pytest
from click.testing import CliRunner

from tasks.cli import operator
from tasks.ops.failures import COMMAND_PLUGINS, Exit, Failure


def group_with(entries: list[EntryPoint], monkeypatch: pytest.MonkeyPatch) -> click.Group:
    monkeypatch.setattr(operator, "entry_points", lambda group: entries if group == COMMAND_PLUGINS else [])
    group = click.Group("root", commands={"status": click.Command("status", callback=lambda: None)})
    operator.add_plugins(group)
    return group


def refusal(group: click.Group, *argv: str) -> Failure:
    result = CliRunner().invoke(group, list(argv))
    assert isinstance(result.exception, Failure), result.output
    assert result.exception.code == Exit.USAGE
    return result.exception


def test_the_installed_dev_group_is_the_development_distributions() -> None:
    from devkit.cli import dev

    assert operator.root.commands["dev"] is dev


def test_a_group_that_does_not_load_says_why_and_the_rest_works(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = EntryPoint(name="dev", value="devkit_that_is_not_there.cli:dev", group=COMMAND_PLUGINS)
    group = group_with([broken], monkeypatch)
    said = str(refusal(group, "dev", "stack", "up"))
    assert said.startswith("the dev commands did not load (ModuleNotFoundError: ") and "\n" not in said
    assert CliRunner().invoke(group, ["status"]).exit_code == 0


def test_without_the_development_distribution_dev_says_it_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    group = group_with([], monkeypatch)
    assert str(refusal(group, "dev", "bench", "--events", "10")) == operator.NOT_INSTALLED
