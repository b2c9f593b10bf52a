"""Every relative link of README and the docs reaches a file that exists, and a link to a
section (`monitoring.md#prometheus-…`) reaches a heading of that file: README points
by topic into docs/, so a moved or renamed file or section must not leave a reader at
a dead link."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "deploy").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def links(markdown: str) -> list[str]:
    """The targets of every link and image outside code blocks and code spans."""
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.MULTILINE | re.DOTALL)
    prose = re.sub(r"`[^`\n]+`", "", prose)
    return LINK.findall(prose)


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub makes of a file's headings: lower case, punctuation dropped,
    spaces as hyphens."""
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.MULTILINE | re.DOTALL)
    headings = re.findall(r"^#+\s+(.+?)\s*$", prose, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_reaches_a_file_and_its_section(doc: Path) -> None:
    dead = []
    for target in links(doc.read_text()):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            dead.append(target)
            continue
        if anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            dead.append(target)
    assert dead == []


def test_the_check_sees_a_dead_link_and_a_dead_section() -> None:
    text = "see [a](missing.md), [b](#no-such-section) and `[c](in-code.md)`\n\n## A section: here\n"
    assert links(text) == ["missing.md", "#no-such-section"]
    assert anchors(text) == {"a-section-here"}
