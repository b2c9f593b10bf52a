"""`init`: the queues and the schema the pipeline needs, against whatever the
configuration points at (the embedded stack, compose, or a real account and database).

login-queue with its dead-letter queue, and Celery's fetch and batch queues with a
dead-letter queue of their own (after BATCH_QUEUE_MAX_RECEIVES receives); then init.sql.
Safe to run again: attributes are set on queues that already exist. Only this command
creates these queues or sets their attributes; the running processes' IAM roles cannot
(deploy/aws/README.md).
"""

from __future__ import annotations

import json

import celeryconfig as config
from tasks.broker import aws
from tasks.pipeline import store

DAY = 24 * 3600
# How long SQS keeps a message that nobody deleted. Every queue here but the fetch queue
# holds raw ip and device_id, so each period is the shortest its purpose allows
# (docs/privacy.md, "Where raw PII can rest").
# login-queue: the producer's queue, drained within seconds; its retention is the outage
# the pipeline may have before events are lost, so it keeps SQS's maximum.
SOURCE_RETENTION = 14 * DAY
# login-queue-dlq: dead letters wait for a fix and `redrive`. SQS moves a message to a
# standard queue's DLQ with its original enqueue time, so a DLQ shorter than its source
# could drop a message on arrival; AWS advises the DLQ to keep at least as long.
# DEAD_LETTER_KEEP_BODY=false keeps raw values out of it altogether.
DEAD_LETTER_RETENTION = 14 * DAY
# Celery's queues: a batch task waits seconds for a worker, and holds a whole batch of raw
# bodies whose source messages are deleted already. A day covers any restart.
TASK_RETENTION = 1 * DAY
# The batch dead-letter queue: batches that failed BATCH_QUEUE_MAX_RECEIVES times, the only
# copy of their events. Long enough to notice (alert on its depth) and replay over a
# weekend, short enough that raw batches do not pile up: 4 days, longer than its sources.
TASK_DEAD_LETTER_RETENTION = 4 * DAY


MAX_MESSAGE_BYTES = 1_048_576


def _create_queue(name: str, attributes: dict[str, str]) -> str:
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    # Stated, not assumed: queues made before 2025 (and some emulators) default to 256 KiB.
    attributes = {"MaximumMessageSize": str(MAX_MESSAGE_BYTES), **attributes}
    sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)  # also for queues that existed
    return url


def _arn(url: str) -> str:
    return aws.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def _redrive(dead_letter_url: str, max_receives: int) -> str:
    return json.dumps({"deadLetterTargetArn": _arn(dead_letter_url), "maxReceiveCount": str(max_receives)})


def create_queues() -> None:
    """login-queue and its DLQ, and Celery's queues with their own DLQ and timeouts."""
    dlq = _create_queue(config.DEAD_LETTER_QUEUE, {"MessageRetentionPeriod": str(DEAD_LETTER_RETENTION)})
    _create_queue(
        config.SOURCE_QUEUE,
        {
            "MessageRetentionPeriod": str(SOURCE_RETENTION),
            "VisibilityTimeout": str(config.SOURCE_VISIBILITY_TIMEOUT),
            "RedrivePolicy": _redrive(dlq, config.SOURCE_MAX_RECEIVES),
        },
    )
    prefix = config.CELERY_QUEUE_PREFIX
    task_dlq = _create_queue(
        f"{prefix}{config.BATCH_QUEUE}-dlq", {"MessageRetentionPeriod": str(TASK_DEAD_LETTER_RETENTION)}
    )
    for queue in (config.FETCH_QUEUE, config.BATCH_QUEUE):
        _create_queue(
            f"{prefix}{queue}",
            {
                "MessageRetentionPeriod": str(TASK_RETENTION),
                "VisibilityTimeout": str(config.TASK_VISIBILITY_TIMEOUT),
                "RedrivePolicy": _redrive(task_dlq, config.BATCH_QUEUE_MAX_RECEIVES),
            },
        )


def init() -> None:
    create_queues()
    store.apply_schema(config.database_url())
