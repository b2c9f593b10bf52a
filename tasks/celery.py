"""The Celery application (`celery -A tasks worker|beat|flower`)."""

from __future__ import annotations

import logging
from typing import Any

import click
from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger
from celery.utils.log import get_multiprocessing_logger

import celeryconfig
from tasks.broker.aws import quiet_botocore
from tasks.ops import censor, logs

# Remote control clients (Flower, inspect) reuse one reply queue per thread (tasks/broker/control.py).
app = Celery(
    "tasks", include=["tasks.fetch", "tasks.batch", "tasks.ops.health"], control="tasks.broker.control:Control"
)
app.config_from_object("celeryconfig")
censor.install(celeryconfig.SECRET_SETTINGS)  # `inspect conf` and Flower's Config tab show them masked


@after_setup_logger.connect
def hold_body_loggers_at_info(logger: logging.Logger | None = None, **_: Any) -> None:
    """Whatever --loglevel says, no logger that prints message bodies goes below INFO;
    and the log format is the configured one (LOG_FORMAT, tasks/ops/logs.py)."""
    quiet_botocore()
    logs.use_configured_format(logger or logging.getLogger(), get_multiprocessing_logger())


@after_setup_task_logger.connect
def format_task_logs(logger: logging.Logger | None = None, **_: Any) -> None:
    if logger is not None:
        logs.use_configured_format(logger)


def serving_flower() -> bool:
    """Whether the Celery command line is loading this app for `celery -A tasks flower`."""
    context = click.get_current_context(silent=True)
    return context is not None and context.invoked_subcommand == "flower"


if serving_flower():  # Flower is read-only and checked however it is started (tasks/ops/flower.py)
    from tasks.ops import flower

    flower.install()
