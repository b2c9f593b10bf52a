"""README and docs name only commands and options that `python -m tasks` has.

Every `python -m tasks <command> …` in a code span or a code block must name a
command of the CLI (a group's command: `dev stack up`), and only that command's
--options. A code span that begins with a command (`redrive --batches`, `dev run`) is
held to the same, and any other --option in a code span must be an option of some
command, or another tool's (FOREIGN_OPTIONS): so `unmask --query`, or a bare `--query`
beside an unmask example, fails. The CLI's words come from the click tree,
`devkit.commands_doc.commands()`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from devkit.commands_doc import CommandWords, commands

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
ROOT_OPTIONS = {"--debug", "--version", "--help"}
# Spans that are another program's command line: their options are that program's.
FOREIGN_COMMANDS = re.compile(
    r"\b(celery|flower|pip|pip-audit|pytest|docker|curl|make|kubectl|promtool|prometheus|aws|psql|py-spy)\b"
)
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
        known = set().union(*(c.options for c in COMMANDS.values())) | set(FOREIGN_OPTIONS) | ROOT_OPTIONS
        unknown = [w for w in words(text) if _option(w) and w not in known]
        found += [f"{w!r} is no option of any command, in `{text}`" for w in unknown]
    return found


def _option(word: str) -> bool:
    return bool(re.fullmatch(r"--[a-z][a-z0-9_-]*", word))


def _invocation(tokens: list[str], text: str) -> list[str]:
    depth = next((n for n in range(len(tokens), 0, -1) if " ".join(tokens[:n]) in COMMANDS), 0)
    while depth < len(tokens) and tokens[depth] in ROOT_OPTIONS:  # `python -m tasks --debug init`
        tokens = tokens[:depth] + tokens[depth + 1 :]
        depth = next((n for n in range(len(tokens), 0, -1) if " ".join(tokens[:n]) in COMMANDS), 0)
    if not depth:
        return [] if tokens in ([], ["--help"], ["--version"]) else [f"no command {tokens[:1]} in `{text}`"]
    name, rest = " ".join(tokens[:depth]), tokens[depth:]
    command = COMMANDS[name]
    if command.choices:  # a group: the longest match took any of its commands already
        return [] if not rest or rest[0] == "--help" else [f"{rest[0]!r} is no command of {name}, in `{text}`"]
    return [f"{w!r} is no option of {name}, in `{text}`" for w in rest if _option(w) and w not in command.options]


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
        "python -m tasks stack up",
        "python -m tasks dev stack restart",
        "python -m tasks bench --events 10",
        "redrive --all",
        "--query",
        ".venv/bin/python -m tasks dev bench --events 10 --output x",
    ],
)
def test_the_check_catches_what_the_cli_does_not_have(text: str) -> None:
    assert problems_in(text)


def test_the_check_passes_what_the_cli_has() -> None:
    for text in [
        'python -m tasks unmask --field ip --reason "…" TOKEN…',
        "python -m tasks sweep",
        "python -m tasks dev stack up",
        "python -m tasks dev run --drain --seed N [--json]",
        "python -m tasks --debug init",
        "python -m tasks dev --help",
        "dev run --timeout 5",
        "python -m tasks redrive [--dry-run] [--limit N]",
        "redrive --batches",
        "--user-id U --since D --until D",
        "celery -A tasks flower --conf=flowerconfig.py --basic_auth=x",
    ]:
        assert problems_in(text) == [], text
