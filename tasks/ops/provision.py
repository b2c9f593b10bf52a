"""`init`: the queues and the schema the pipeline needs, against whatever the
configuration points at (the embedded stack, compose, or a real account and database).

login-queue with its dead-letter queue, and Celery's fetch and batch queues with a
dead-letter queue of their own (after BATCH_QUEUE_MAX_RECEIVES receives); then init.sql.
Safe to run again: attributes are set on queues that already exist.
"""

from __future__ import annotations

import json

import celeryconfig as config
from tasks.broker import aws
from tasks.pipeline import store


def _create_queue(name: str, attributes: dict[str, str]) -> str:
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)  # also for queues that existed
    return url


def _arn(url: str) -> str:
    return aws.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def _redrive(dead_letter_url: str, max_receives: int) -> str:
    return json.dumps({"deadLetterTargetArn": _arn(dead_letter_url), "maxReceiveCount": str(max_receives)})


def create_queues() -> None:
    """login-queue and its DLQ, and Celery's queues with their own DLQ and timeouts."""
    retention = {"MessageRetentionPeriod": str(14 * 24 * 3600)}
    dlq = _create_queue(config.DEAD_LETTER_QUEUE, retention)
    _create_queue(
        config.SOURCE_QUEUE,
        {
            **retention,
            "VisibilityTimeout": str(config.SOURCE_VISIBILITY_TIMEOUT),
            "RedrivePolicy": _redrive(dlq, config.SOURCE_MAX_RECEIVES),
        },
    )
    prefix = config.CELERY_QUEUE_PREFIX
    task_dlq = _create_queue(f"{prefix}{config.BATCH_QUEUE}-dlq", retention)
    for queue in (config.FETCH_QUEUE, config.BATCH_QUEUE):
        _create_queue(
            f"{prefix}{queue}",
            {
                "VisibilityTimeout": str(config.TASK_VISIBILITY_TIMEOUT),
                "RedrivePolicy": _redrive(task_dlq, config.BATCH_QUEUE_MAX_RECEIVES),
            },
        )


def init() -> None:
    create_queues()
    store.apply_schema(config.database_url())
