"""A message too large to travel as it is: the fetch keeps its event's columns alone.

SQS takes a message of up to 1 MiB, and a valid login event may be that large: its
columns are a few hundred bytes, and any other key (``"pad": "xxx…"``) is ignored. A
batch task message is 1 MiB too, after kombu's two base64 layers (16/9 of the JSON:
tasks.pipeline.batching), so such an event cannot travel in one; it used to become a
dead letter "too large", whose body was withheld as too large again: a valid login,
lost for good (issue 27).

Of the three places such an event could be handled, the fetch's receive is the one
that loses nothing and holds the least:

- Here, on receipt (`compact`): a body over COMPACT_ABOVE characters is read by the
  record's own rules (tasks.pipeline.records.parse_event, on the whole body: a key
  twice anywhere, a bad value, not JSON). A valid event travels on as a JSON object of
  the known fields alone, their values as they were written; parsing that gives the
  same event (tests/unit/test_oversize.py holds the two equal), so its row is the same,
  and the rest of the body, which no column keeps, is dropped before the fetch holds
  more than one response's worth of it. An invalid one keeps its whole body and becomes
  a dead letter from the fetch with the record's own reason, and that body, so that
  `redrive` can bring it back; a dead letter too large even for that (a body within its
  attributes' size of SQS's limit) is left in login-queue, where SQS's own redrive
  policy moves it, body intact, to login-queue-dlq after SOURCE_MAX_RECEIVES receives
  (tasks.pipeline.service.dead_letter_set_apart).
- Masking and writing the row inline in the fetch would need a transaction, the masking
  key and the retries of a batch in the fetch, for what is then a one-row batch.
- Keeping the body in SQS (a claim-check message) would put every large valid event
  through a second queue and a second receive.

A valid event that later becomes a dead letter (PostgreSQL refusing its row, its batch
given up) carries the compact body, which is the whole event as far as any column is
concerned, signed as such, so `redrive` replays it under its original id and date.
"""

from __future__ import annotations

import json
from dataclasses import replace

from tasks.pipeline.records import KNOWN_FIELDS, SourceMessage, parse_event

# Bodies longer than this (in characters) travel compacted. The columns of a valid event
# fit in a few KiB even decomposed and escaped, so no valid event's fields are cut.
COMPACT_ABOVE = 16_384


class Written(str):
    """A JSON number as it was written: passed on as that text, never read by int()."""


def _as_written(value: object) -> str:
    return value if isinstance(value, Written) else json.dumps(value)


def compact_body(body: str) -> str:
    """The known fields of a valid event's body, as a JSON object, values as written."""
    record = json.loads(body, parse_int=Written, parse_float=Written, parse_constant=Written)
    fields = sorted(KNOWN_FIELDS & record.keys())
    return "{" + ", ".join(f"{json.dumps(name)}: {_as_written(record[name])}" for name in fields) + "}"


def compact(message: SourceMessage) -> SourceMessage:
    """The message as it travels: as it is up to COMPACT_ABOVE characters, else its
    event's fields alone. Raises Invalid (with the record's reason) for a large body
    that is no valid event."""
    if len(message.body) <= COMPACT_ABOVE:
        return message
    parse_event(message)  # the record's own rules, on the whole body
    return replace(message, body=compact_body(message.body))
