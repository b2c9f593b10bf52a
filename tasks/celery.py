"""The Celery application (`celery -A tasks worker|beat|flower`)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click
from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger, beat_init, import_modules, worker_init
from celery.utils.log import get_multiprocessing_logger

import celeryconfig
from tasks.broker.aws import quiet_botocore
from tasks.ops import censor, logs

# Remote control clients (Flower, inspect) reuse one reply queue per thread (tasks/broker/control.py).
app = Celery(
    "tasks",
    include=["tasks.fetch", "tasks.batch", "tasks.retention", "tasks.ops.health"],
    control="tasks.broker.control:Control",
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


@worker_init.connect
@beat_init.connect
def refuse_an_untrusted_endpoint(**_: Any) -> None:
    """A worker or beat whose SQS endpoint presents a certificate that does not verify
    stops at start with one line naming it, and exit status 2 (as a bad setting does):
    kombu would otherwise retry it as if SQS were down, and the fetch fail on every tick."""
    from tasks.broker import aws, tls

    try:
        tls.check(aws.endpoint_url())
    except tls.CertificateRefused as refused:
        if logging.getLogger().handlers:  # beat logs by now; the worker not yet: one line either way
            logging.getLogger(__name__).critical(refused.line)
        else:
            print(refused.line, file=sys.stderr, flush=True)
        raise SystemExit(celeryconfig.EXIT_CONFIGURATION) from None


def serving_flower() -> bool:
    """Whether the Celery command line is loading this app for `celery -A tasks flower`."""
    context = click.get_current_context(silent=True)
    return context is not None and context.invoked_subcommand == "flower"


if serving_flower():  # Flower is read-only and checked however it is started (tasks/ops/flower.py)
    from tasks.ops import flower

    flower.install()


@import_modules.connect
def refuse_an_unguarded_flower(**_: Any) -> None:
    """Flower's safety wrappers fail closed: a Flower building its app from this one
    (Flower.__init__ sends import_modules) refuses to start unless they are in place,
    whether or not the hook above ran (tasks/ops/flower.py). Any other process: nothing."""
    flower_app = sys.modules.get("flower.app")
    if flower_app is None:
        return
    frame: Any = sys._getframe(1)
    while frame is not None:
        if isinstance(frame.f_locals.get("self"), flower_app.Flower):
            from tasks.ops import flower as safety

            safety.refuse_unless_guarded(frame.f_locals["self"])
            return
        frame = frame.f_back
