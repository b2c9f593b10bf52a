"""The mask-and-insert task: one batch of source messages, parsed, masked and written.

A thin task over tasks.pipeline.service: transient failures (PostgreSQL or SQS
unreachable, a soft time limit) are retried with exponential backoff and equal jitter,
up to BATCH_MAX_RETRIES; a batch that exhausts them, or fails for a permanent reason,
goes whole to the dead-letter path with that reason. Nothing is dropped. In Flower,
events and `celery inspect`, a batch shows as its size, never its records.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict
from time import monotonic
from typing import Any

from celery import Task
from celery.signals import worker_init

import celeryconfig as config
from tasks.celery import app
from tasks.pipeline.keys import MaskingKeyError
from tasks.pipeline.retry import backoff, describe, is_transient
from tasks.pipeline.service import give_up, load_masker, pipeline, read_args, write_batch
from tasks.pipeline.store import BatchCounts

log = logging.getLogger(__name__)


@worker_init.connect
def refuse_to_start_without_a_usable_key(**_: Any) -> None:
    """Fail at start, not on the first batch: one line, exit status 2."""
    try:
        load_masker()
    except (MaskingKeyError, ValueError) as exc:
        print(f"worker refused to start: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


class TransientFailure(Exception):
    """Why a batch is retried, as Celery logs it and Flower shows it: no record's values."""


class BatchTask(Task):
    """Shows a batch as its size wherever Celery shows arguments."""

    Request = "tasks.broker.request:BatchRequest"  # the worker's reports: inspect, events, logs

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        if args:
            options.setdefault("argsrepr", f"batch of {len(args[0])} messages")
            options.setdefault("kwargsrepr", "{}")
        return super().apply_async(args, kwargs, **options)


@app.task(bind=True, base=BatchTask, name="tasks.mask_and_insert", max_retries=config.BATCH_MAX_RETRIES)
def mask_and_insert(self: Task, messages: list[list[Any]]) -> dict[str, Any]:
    batch, refused = read_args(messages, self.request.id)
    pipe = pipeline()
    started = monotonic()
    try:
        counts = write_batch(pipe, batch, self.request.id, refused)
    except Exception as exc:
        reason = verdict(self, exc)
    else:
        log_batch("batch committed", counts, monotonic() - started)
        return asdict(counts)
    # Outside the except block, so that nothing raised from here carries the original
    # exception, whose text could quote a value, as its context.
    given_up = give_up(pipe, batch, reason, self.request.id, refused)
    log_batch("batch given up", given_up, monotonic() - started)
    return {**asdict(given_up), "gave_up": reason}


def log_batch(what: str, counts: BatchCounts, seconds: float) -> None:
    """One line per batch: its size, counts and duration (the task id comes with the
    log record, tasks/ops/logs.py), never a record's values."""
    fields = {**asdict(counts), "batch_size": counts.received, "duration_seconds": round(seconds, 3)}
    log.info(
        "%s: %d received, %d inserted, %d duplicates, %d dead-lettered, in %.2f s",
        what,
        counts.received,
        counts.inserted,
        counts.duplicates,
        counts.dead_lettered,
        seconds,
        extra=fields,
    )


def verdict(task: Task, exc: Exception) -> str:
    """Why the batch is given up, or a retry (raised) for a transient failure."""
    if not is_transient(exc):
        return f"permanent failure: {describe(exc)}"
    if task.request.retries >= task.max_retries:
        return f"gave up after {task.request.retries} retries: {describe(exc)}"
    retry_in = backoff(task.request.retries, config.RETRY_BACKOFF_MAX)
    raise task.retry(exc=TransientFailure(describe(exc)), countdown=retry_in) from None
