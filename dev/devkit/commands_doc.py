"""The commands table and exit codes of docs/commands.md, made from the click tree and
tasks/ops/failures.py (`python -m tasks dev docs`, `make docs`); a test holds the doc
equal to them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click

from devkit import docs
from tasks.ops.failures import MEANING

COMMANDS = docs.DOCS / "commands.md"  # the commands table and exit codes
BEGIN, END = "<!-- commands:begin -->", "<!-- commands:end -->"
PROG = "python -m tasks"


def _param(param: click.Parameter, ctx: click.Context) -> str | None:
    if isinstance(param, click.Argument):
        return param.make_metavar(ctx)
    if not isinstance(param, click.Option) or param.hidden or param.name == "help":
        return None
    text = max(param.opts, key=len)
    if not param.is_flag:
        text += f" {param.make_metavar(ctx)}"
    return text if param.required else f"[{text}]"


def _leaves(group: click.Group, path: list[str]) -> Iterator[tuple[list[str], click.Command]]:
    for name, command in group.commands.items():
        if command.hidden:
            continue
        if isinstance(command, click.Group):
            yield from _leaves(command, [*path, name])
        else:
            yield [*path, name], command


@dataclass(frozen=True)
class CommandWords:
    """What a command takes: its --options, and for a group, its sub-commands' names."""

    options: frozenset[str]
    choices: frozenset[str]


def commands(group: click.Group | None = None, path: str = "") -> dict[str, CommandWords]:
    """Every command and group of `python -m tasks`, by its path (`dev stack up`), and the
    words it takes, from the click tree: what README and docs may name
    (tests/unit/test_docs_cli.py)."""
    if group is None:
        from tasks.cli.operator import root

        group = root
    found: dict[str, CommandWords] = {}
    for name, command in group.commands.items():
        key = f"{path} {name}".strip()
        options = {o for p in command.params if isinstance(p, click.Option) for o in p.opts if o.startswith("--")}
        children = set(command.commands) if isinstance(command, click.Group) else set()
        found[key] = CommandWords(frozenset(options | {"--help"}), frozenset(children))
        if isinstance(command, click.Group):
            found |= commands(command, key)
    return found


def _summary(command: click.Command) -> str:
    first = (command.help or "").split("\n\n")[0]
    return " ".join(first.split())


def _cell(text: str) -> str:
    """A table cell's text: a pipe, even in code, would end the cell."""
    return text.replace("|", "\\|")


def commands_table(root: click.Group) -> str:
    rows = ["| command | what it does |", "|---|---|"]
    for path, command in _leaves(root, []):
        ctx = click.Context(command, info_name=" ".join([PROG, *path]))
        usage = " ".join(filter(None, [ctx.info_name, *(_param(p, ctx) for p in command.params)]))
        rows.append(f"| `{_cell(usage)}` | {_cell(_summary(command))} |")
    rows += ["", "| exit code | meaning |", "|---|---|"]
    rows += [f"| {int(code)} | {meaning} |" for code, meaning in MEANING.items()]
    return "\n".join(rows)


def generated() -> str:
    from tasks.cli.operator import root

    return commands_table(root)


def write() -> list[Path]:
    """Every generated part of the docs: the settings, the metrics and the commands; the
    files written."""
    written = docs.write_tables()
    docs.write_section(generated(), BEGIN, END, COMMANDS)
    return [*written, COMMANDS]
