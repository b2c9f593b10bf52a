"""Dead-letter reasons, put into a bounded set of classes for /metrics and alerts.

A reason names a field or an exception's type, never a value (tasks/pipeline/records.py,
source.py, masking.py, store.py, service.py); its class is one of `CLASSES`, so a metric label can
never carry anything a producer chose. The class is stored beside the reason in
dead_letters (init.sql) when the letter is noted.
"""

from __future__ import annotations

import re

# In order of precedence: the first pattern that matches a reason gives its class.
PATTERNS = (
    ("not_json", re.compile(r"^body is not JSON$")),
    ("not_object", re.compile(r"^body is not a JSON object$")),
    ("missing_field", re.compile(r" is missing$")),
    ("too_long", re.compile(r" is longer than ")),
    ("too_large", re.compile(r"^too large$")),
    ("unmaskable", re.compile(r"^record could not be masked: ")),
    ("database_refused", re.compile(r"^database refused the record: ")),
    ("batch_given_up", re.compile(r"^(permanent failure: |gave up after )")),
    ("unusable_message", re.compile(r"^(message has no usable |message body is not text$|batch entry is not )")),
    ("invalid_field", re.compile(r"^(\w+ (is not |is a |contains |has a part )|body has (the key \w+|a key) twice$)")),
)
CLASSES = (*(name for name, _ in PATTERNS), "other")


def reason_class(reason: str) -> str:
    """The class of a dead letter's reason; `other` for a reason no pattern knows."""
    for name, pattern in PATTERNS:
        if pattern.search(reason):
            return name
    return "other"


# `redrive --reason` (tasks/ops/redrive.py) picks dead letters by these labels: a class
# above, or one of these groups. A batch given up is split by why: `transient` when its
# retries ran out on a failure that may pass (the database or SQS unreachable, a timeout:
# what an outage leaves), `permanent` when it failed in a way no retry mends. A letter
# with no reason at all is one SQS moved after too many receives.
RETRIES_EXHAUSTED = re.compile(r"^gave up after \d+ retries: ")
MALFORMED = ("not_json", "not_object", "missing_field", "too_long", "too_large", "unusable_message", "invalid_field")
MOVED_BY_SQS = "moved_by_sqs"
GROUPS = ("transient", "permanent", "malformed", MOVED_BY_SQS)
SELECTABLE = (*GROUPS, *CLASSES)


def redrive_class(reason: str | None) -> str:
    """The label `redrive` shows for a dead letter's reason (None: no reason attribute)."""
    if reason is None:
        return MOVED_BY_SQS
    name = reason_class(reason)
    if name == "batch_given_up":
        return "transient" if RETRIES_EXHAUSTED.search(reason) else "permanent"
    return name


def labels(reason: str | None) -> set[str]:
    """Every label of SELECTABLE that picks a dead letter with this reason."""
    name = redrive_class(reason)
    found = {name}
    if name in ("transient", "permanent"):
        found.add("batch_given_up")
    if name in MALFORMED:
        found.add("malformed")
    return found
