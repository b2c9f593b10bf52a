"""What reaches the operator's terminal from data: no control character survives."""

from __future__ import annotations

import ast
import sys
import unicodedata

from tasks.ops.terminal import escaped, printable
from tasks.pipeline.records import BIDI_CONTROLS


def obeyed_by_a_terminal(char: str) -> bool:
    return unicodedata.category(char) == "Cc" or char in BIDI_CONTROLS


def test_every_control_character_of_a_value_is_escaped_and_the_rest_kept() -> None:
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        if obeyed_by_a_terminal(char):
            assert escaped(f"a{char}b").isprintable() and escaped(f"a{char}b") != f"a{char}b", hex(code)
        elif char != "\\" and not 0xD800 <= code <= 0xDFFF:
            assert escaped(char) == char, hex(code)


def test_a_value_reads_back_exactly() -> None:
    value = "dev-1\n\x1b]52;c;eA==\x07\x9b2J\u202e \\x1b é"
    shown = escaped(value)
    assert shown == "dev-1\\n\\x1b]52;c;eA==\\x07\\x9b2J\\u202e \\\\x1b é"
    assert ast.literal_eval(f'"{shown}"') == value  # as a Python string literal reads it


def test_a_commands_output_keeps_its_lines_and_tabs_and_loses_every_other_control() -> None:
    assert printable("a\tb\nc\x1b[2Jd\x9b\x7f\r") == "a\tb\nc\\x1b[2Jd\\x9b\\x7f\\r"
    assert printable("C:\\path") == "C:\\path"
