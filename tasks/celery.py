"""The Celery application (`celery -A tasks worker|beat|flower`)."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import after_setup_logger

from tasks.broker.aws import quiet_botocore

app = Celery("tasks", include=["tasks.fetch", "tasks.batch", "tasks.ops.health"])
app.config_from_object("celeryconfig")


@after_setup_logger.connect
def hold_body_loggers_at_info(**_: Any) -> None:
    """Whatever --loglevel says, no logger that prints message bodies goes below INFO."""
    quiet_botocore()
