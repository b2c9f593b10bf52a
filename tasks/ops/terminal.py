"""Text from data, made safe for the operator's terminal.

What a producer sent (a value `unmask` recovers, the `reason` attribute of a message SQS
itself moved to the dead-letter queue) or SQS answered (an error code) may hold control
characters: C0 (a newline that forges a line of output), ESC and C1 (CSI and OSC
sequences: colours, cursor moves, the title, the clipboard with OSC 52), DEL, and the
bidirectional formatting characters that make text display as other text.

`escaped` writes each of them, and the backslash, as a Python string literal does
(`\\n`, `\\x1b`, `\\x9b`, `\\u202e`, `\\\\`): a value from data stays whole, on its line,
and can be read back exactly. Every command escapes each such value where it puts it
into a line. `printable` is the backstop for a command's whole output (tasks/cli/common.py
`say`, and the one line of a failure): the same, but it keeps the newlines and tabs that
are the command's own layout, and the backslashes.
"""

from __future__ import annotations

import re

from tasks.pipeline.records import BIDI_CONTROLS

_BIDI = "".join(sorted(BIDI_CONTROLS))
_IN_VALUES = re.compile("[\\\\\x00-\x1f\x7f-\x9f" + _BIDI + "]")
_IN_OUTPUT = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f" + _BIDI + "]")
_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def escaped(value: object) -> str:
    """A value from data as one line of inert text."""
    return _IN_VALUES.sub(_escape, str(value))


def printable(output: str) -> str:
    """A command's output with every control character escaped but its line breaks and tabs."""
    return _IN_OUTPUT.sub(_escape, output)
