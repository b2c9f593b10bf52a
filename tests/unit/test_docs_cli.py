"""README and docs name only commands and options that `python -m tasks` has.

Every `python -m tasks <command> …` in a code span or a code block must name a
subcommand of the CLI, only that subcommand's --options, and, for a command with fixed
actions (`stack up`), one of them. A code span that begins with a subcommand
(`redrive --batches`) is held to the same, and any other --option in a code span must be
an option of some subcommand, or another tool's (FOREIGN_OPTIONS): so `unmask --query`,
or a bare `--query` beside an unmask example, fails. The CLI's words come from
`tasks.ops.cli.commands()`; point COMMANDS elsewhere if the CLI moves.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tasks.ops.cli import CommandWords, commands

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMANDS: dict[str, CommandWords] = commands()
# Options of other programs that the docs name in spans of their own.
FOREIGN_OPTIONS = {
    "--address": "Flower",
    "--basic_auth": "Flower",
    "--strict": "pip-audit",
    "--loglevel": "celery worker",
}
# Spans that are another program's command line: their options are that program's.
FOREIGN_COMMANDS = re.compile(r"\b(celery|flower|pip|pip-audit|pytest|docker|curl|make|kubectl|promtool|prometheus|aws|psql)\b")
INVOCATION = re.compile(r"python -m tasks\b(.*)")


def code_texts(markdown: str) -> list[str]:
    """The text of every code span, and every line of every code block (a line that
    ends in a backslash continues on the next)."""
    texts: list[str] = []
    blocks = re.split(r"^```.*$", markdown, flags=re.MULTILINE)
    for i, part in enumerate(blocks):
        if i % 2:  # inside a fence
            texts += part.replace("\\\n", " ").splitlines()
        else:
            texts += re.findall(r"`([^`\n]+)`", part)
    return texts


def words(text: str) -> list[str]:
    """Tokens, without the brackets of optional parts or an option's `=value`."""
    return [w.strip("[]()").split("=")[0] for w in text.split()]


def problems_in(text: str) -> list[str]:
    found: list[str] = []
    if match := INVOCATION.search(text):
        found += _invocation(words(match.group(1)), text)
    elif (tokens := words(text)) and tokens[0] in COMMANDS:
        found += _invocation(tokens, text)
    elif not FOREIGN_COMMANDS.search(text):
        known = set().union(*(c.options for c in COMMANDS.values())) | set(FOREIGN_OPTIONS)
        unknown = [w for w in words(text) if _option(w) and w not in known]
        found += [f"{w!r} is no option of any command, in `{text}`" for w in unknown]
    return found


def _option(word: str) -> bool:
    return bool(re.fullmatch(r"--[a-z][a-z0-9_-]*", word))


def _invocation(tokens: list[str], text: str) -> list[str]:
    if not tokens or tokens[0] not in COMMANDS:
        return [f"no command {tokens[:1]} in `{text}`"]
    command, rest = COMMANDS[tokens[0]], tokens[1:]
    found = [f"{w!r} is no option of {tokens[0]}, in `{text}`" for w in rest if _option(w) and w not in command.options]
    positional = [w for w in rest if w and not w.startswith("-")]
    if command.choices and positional and positional[0] not in command.choices:
        found.append(f"{positional[0]!r} is no action of {tokens[0]}, in `{text}`")
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_the_docs_name_only_commands_and_options_the_cli_has(doc: Path) -> None:
    assert [p for text in code_texts(doc.read_text()) for p in problems_in(text)] == []


@pytest.mark.parametrize(
    "text",
    [
        "python -m tasks unmask --query 'select 1'",
        "python -m tasks unmask --field ip --reason r --query x",
        "python -m tasks purge",
        "python -m tasks stack restart",
        "redrive --all",
        "--query",
        ".venv/bin/python -m tasks bench --events 10 --output x",
    ],
)
def test_the_check_catches_what_the_cli_does_not_have(text: str) -> None:
    assert problems_in(text)


def test_the_check_passes_what_the_cli_has() -> None:
    for text in [
        'python -m tasks unmask --field ip --reason "…" TOKEN…',
        "python -m tasks stack sweep",
        "python -m tasks redrive [--dry-run] [--limit N]",
        "redrive --batches",
        "--user-id U --since D --until D",
        "celery -A tasks flower --conf=flowerconfig.py --basic_auth=x",
    ]:
        assert problems_in(text) == [], text
