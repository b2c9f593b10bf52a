"""The Celery application (`celery -A tasks worker|beat|flower`)."""

from __future__ import annotations

from typing import Any

import click
from celery import Celery
from celery.signals import after_setup_logger

import celeryconfig
from tasks.broker.aws import quiet_botocore
from tasks.ops import censor

# Remote control clients (Flower, inspect) reuse one reply queue per thread (tasks/broker/control.py).
app = Celery(
    "tasks", include=["tasks.fetch", "tasks.batch", "tasks.ops.health"], control="tasks.broker.control:Control"
)
app.config_from_object("celeryconfig")
censor.install(celeryconfig.SECRET_SETTINGS)  # `inspect conf` and Flower's Config tab show them masked


@after_setup_logger.connect
def hold_body_loggers_at_info(**_: Any) -> None:
    """Whatever --loglevel says, no logger that prints message bodies goes below INFO."""
    quiet_botocore()


def serving_flower() -> bool:
    """Whether the Celery command line is loading this app for `celery -A tasks flower`."""
    context = click.get_current_context(silent=True)
    return context is not None and context.invoked_subcommand == "flower"


if serving_flower():  # Flower is read-only and checked however it is started (tasks/ops/flower.py)
    from tasks.ops import flower

    flower.install()
