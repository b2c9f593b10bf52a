"""pytest plugin of `make conformance`, loaded into Celery's and kombu's own suites.

With CONFORMANCE_TRANSPORT=ours, the ``sqs`` transport alias points at this project's
transport (tasks/broker/transport.py) for the whole session, so every ``sqs://`` URL in
those suites uses it; otherwise stock kombu SQS runs. Either way a worker death
("Unrecoverable error", logged critical by Celery's worker) is appended to the file
named by CONFORMANCE_DEATHS, so the command can count deaths per session.
"""

from __future__ import annotations

import logging
import os

from kombu.transport import TRANSPORT_ALIASES

if os.environ.get("CONFORMANCE_TRANSPORT") == "ours":
    TRANSPORT_ALIASES["sqs"] = "tasks.broker.transport:Transport"


class DeathRecorder(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "Unrecoverable error" in message and (path := os.environ.get("CONFORMANCE_DEATHS")):
            with open(path, "a") as deaths:
                deaths.write(message.splitlines()[0][:300] + "\n")


logging.getLogger().addHandler(DeathRecorder(logging.ERROR))
