"""Parse and validate: a source message becomes a LoginEvent or a DeadLetter.

A source message is the SQS message id, its SentTimestamp and its raw body. The body
must be a JSON object with a non-empty ``user_id``, and no key twice at any depth (an
ambiguous record: which ``ip`` is meant?). The other known fields may be strings or
null or missing (a null column). A value of another JSON type is taken when its
meaning is unambiguous: a whole number written in plain digits in ``user_id``,
``app_version`` or ``device_id`` is its decimal text (``2`` is ``"2"``). Anything
else is refused, each with its own reason: a fraction (``2.30`` as a version is 2.3
or 2.30?), exponent notation (``1e2``), a number out of range (``1e400``, or more than
MAX_NUMBER_DIGITS digits), NaN or Infinity (not a finite number), a boolean, a list
or an object, or a number where an address is expected. ``app_version`` must be
encodable (tasks.versions). Unknown keys are ignored.

Text is NFC-normalised, so one user id typed in composed or decomposed form is one
user. No text field may hold a control character (Unicode category Cc: C0, DEL, C1)
or a bidirectional formatting character (U+202A..U+202E, U+2066..U+2069, U+200E,
U+200F, U+061C): one would make a value display as another, or write to the terminal
of an operator who reads it (``unmask`` shows masked fields' values).
The masked fields are normalised again by tasks.masking and stored only as tokens. Text
must fit its column once normalised (masked fields: a bound in UTF-8 bytes, so every
token fits varchar(256)) and carry no NUL byte.
Anything else is a DeadLetter with a reason that names the field but never its value,
since values may be personal data.

Normalisation costs more than linear time: CPython orders a run of combining marks by
insertion sort, so 90,000 marks in descending combining class took 25 s of CPU. Text is
therefore measured before it is normalised, and refused when it is longer than
NFC_SHRINK times its limit: NFC composes at most NFC_SHRINK code points (and UTF-8
bytes) into one, so such text could not fit once normalised either.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from tasks.pipeline.versions import UnencodableVersion, encode_app_version

# Column widths of user_logins for the fields stored as given.
TEXT_LIMITS = {"user_id": 128, "device_type": 32, "locale": 32}
# Masked fields: a bound in UTF-8 bytes, so that every token fits varchar(256).
MASKED_BYTE_LIMITS = {"ip": 64, "device_id": 127}
VERSION_LIMIT = 32
MESSAGE_ID_LIMIT = 128  # user_logins.message_id
MAX_SENT_AT_MS = 10**15 - 1  # 15 digits, as tasks.pipeline.source reads SentTimestamp
# Fields where a JSON whole number has one meaning: its decimal text.
NUMBERS_AS_TEXT = frozenset({"user_id", "app_version", "device_id"})
KNOWN_FIELDS = frozenset({"user_id", "app_version", "device_type", "ip", "locale", "device_id"})
# Wider than any column: a longer whole number is refused before int() reads it.
MAX_NUMBER_DIGITS = 128
# The most code points, and UTF-8 bytes, that NFC composes into one code point: the
# longest canonical decomposition is 4 code points (U+1F82), a Hangul syllable is 3
# jamo of 3 bytes each composed into 3 bytes (tests/unit/test_records.py checks the
# whole of Unicode).
NFC_SHRINK = 4
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Unicode's control characters (category Cc: U+0000-U+001F, U+007F-U+009F) and the above.
CONTROL_OR_BIDI = re.compile("[\x00-\x1f\x7f-\x9f" + "".join(sorted(BIDI_CONTROLS)) + "]")


@dataclass(frozen=True)
class SourceMessage:
    """One message of login-queue, as a batch task carries it."""

    message_id: str
    sent_at_ms: int
    body: str

    def as_args(self) -> list[Any]:
        return [self.message_id, self.sent_at_ms, self.body]

    @classmethod
    def from_args(cls, args: object) -> SourceMessage:
        """The message a task argument carries; Invalid unless it is exactly
        [message_id, sent_at_ms, body] as `as_args` makes it."""
        if isinstance(args, list | tuple) and len(args) == 3:
            message_id, sent_at_ms, body = args
            if (
                isinstance(message_id, str)
                and 0 < len(message_id) <= MESSAGE_ID_LIMIT
                and type(sent_at_ms) is int
                and 0 <= sent_at_ms <= MAX_SENT_AT_MS
                and isinstance(body, str)
            ):
                return cls(message_id, sent_at_ms, body)
        raise Invalid("batch entry is not [message_id, sent_at_ms, body]")


@dataclass(frozen=True)
class LoginEvent:
    """A valid login event, still holding its raw ip and device_id."""

    message_id: str
    user_id: str
    device_type: str | None
    ip: str | None
    device_id: str | None
    locale: str | None
    app_version: int | None
    create_date: date


@dataclass(frozen=True)
class DeadLetter:
    """A message that cannot become a row, and why: it goes to login-queue-dlq."""

    message: SourceMessage
    reason: str


class Invalid(ValueError):
    """A record that breaks the contract above."""


@dataclass(frozen=True)
class RefusedNumber:
    """A JSON number that is text in no field: why, as the end of a reason."""

    why: str


def _float(text: str) -> RefusedNumber:
    if math.isinf(float(text)):
        return RefusedNumber("a number out of range")
    if "e" in text or "E" in text:
        return RefusedNumber("a number in exponent notation; send it as text")
    return RefusedNumber("a number with a fraction; send it as text")


def _int(text: str) -> int | RefusedNumber:
    digits = len(text.lstrip("-"))
    return RefusedNumber("a number out of range") if digits > MAX_NUMBER_DIGITS else int(text)


def _constant(_: str) -> RefusedNumber:
    return RefusedNumber("not a finite number")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for key, value in pairs:
        if key in record:
            raise Invalid(f"body has the key {key} twice" if key in KNOWN_FIELDS else "body has a key twice")
        record[key] = value
    return record


def _as_text(field: str, value: object) -> str:
    """A JSON value as text where that is unambiguous, else Invalid with the reason."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and field in NUMBERS_AS_TEXT:
        return str(value)
    if isinstance(value, RefusedNumber) and field in NUMBERS_AS_TEXT:
        raise Invalid(f"{field} is {value.why}")
    raise Invalid(f"{field} is not a string")


def _size(value: str, unit: str) -> int:
    """Characters (code points), or UTF-8 bytes; UnicodeEncodeError for a lone surrogate."""
    return len(value.encode("utf-8")) if unit == "bytes" else len(value)


def _text(record: dict[str, Any], field: str, limit: int, unit: str = "characters") -> str | None:
    value = record.get(field)
    if value is None:
        return None
    value = _as_text(field, value)
    if "\x00" in value:
        raise Invalid(f"{field} contains a NUL byte")
    try:
        raw_size = _size(value, "bytes")
    except UnicodeEncodeError:  # a lone surrogate: no UTF-8, so no COPY either
        raise Invalid(f"{field} is not valid Unicode text") from None
    if CONTROL_OR_BIDI.search(value):
        raise Invalid(f"{field} contains a control or bidirectional formatting character")
    if (raw_size if unit == "bytes" else len(value)) > NFC_SHRINK * limit:  # before NFC's superlinear work
        raise Invalid(f"{field} is longer than {limit} {unit}")
    value = unicodedata.normalize("NFC", value)
    if _size(value, unit) > limit:
        raise Invalid(f"{field} is longer than {limit} {unit}")
    return value


def _load_object(body: str) -> dict[str, Any]:
    try:
        record = json.loads(
            body,
            object_pairs_hook=_no_duplicate_keys,
            parse_float=_float,
            parse_int=_int,
            parse_constant=_constant,
        )
    except Invalid:
        raise
    except (ValueError, RecursionError):
        raise Invalid("body is not JSON") from None
    if not isinstance(record, dict):
        raise Invalid("body is not a JSON object")
    return record


def create_date(sent_at_ms: int) -> date:
    """The UTC date on which SQS accepted the message."""
    return datetime.fromtimestamp(sent_at_ms / 1000, tz=UTC).date()


def parse_event(message: SourceMessage) -> LoginEvent:
    """The login event in a source message, or Invalid with the reason."""
    record = _load_object(message.body)
    user_id = _text(record, "user_id", TEXT_LIMITS["user_id"])
    if not user_id or not user_id.strip():
        raise Invalid("user_id is missing")
    version = _text(record, "app_version", VERSION_LIMIT)
    try:
        app_version = None if version is None else encode_app_version(version.strip())
    except UnencodableVersion as exc:
        raise Invalid(str(exc)) from None
    return LoginEvent(
        message_id=message.message_id,
        user_id=user_id,
        device_type=_text(record, "device_type", TEXT_LIMITS["device_type"]),
        ip=_text(record, "ip", MASKED_BYTE_LIMITS["ip"], "bytes"),
        device_id=_text(record, "device_id", MASKED_BYTE_LIMITS["device_id"], "bytes"),
        locale=_text(record, "locale", TEXT_LIMITS["locale"]),
        app_version=app_version,
        create_date=create_date(message.sent_at_ms),
    )
