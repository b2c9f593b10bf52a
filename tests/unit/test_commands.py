"""The click tree documents itself: every command and option has help, and the commands
table of docs/commands.md is the one made from the tree (`make docs`)."""

from __future__ import annotations

import click

from devkit import commands_doc as readme
from devkit.docs import section
from tasks.cli.operator import root


def every_command() -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []

    def walk(group: click.Group, path: str) -> None:
        for name, command in group.commands.items():
            found.append((f"{path} {name}".strip(), command))
            if isinstance(command, click.Group):
                walk(command, f"{path} {name}")

    walk(root, "")
    return found


def test_every_command_and_option_says_what_it_is_for() -> None:
    assert root.help
    for path, command in every_command():
        assert command.help, path
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{path} {param.opts}"


def test_the_commands_table_is_the_one_made_from_the_command_line() -> None:
    text = readme.COMMANDS.read_text()
    assert section(text, readme.BEGIN, readme.END) == readme.generated(), "stale: run `make docs`"


def test_operator_commands_and_development_commands_are_separate_groups() -> None:
    operator = {"status", "health", "metrics", "redrive", "unmask", "rekey", "forget", "init", "sweep", "config"}
    assert {"dev", *operator} == set(root.commands)
    dev = root.commands["dev"]
    assert isinstance(dev, click.Group)
    assert {"stack", "seed", "run", "bench", "writers", "capacity", "faults", "conformance", "docs"} == set(
        dev.commands
    )
