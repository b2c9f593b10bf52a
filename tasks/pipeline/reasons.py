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
