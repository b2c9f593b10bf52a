"""boto3 clients for SQS and SNS, configured once from celeryconfig."""

from __future__ import annotations

from functools import cache
from typing import Any

import boto3
from botocore.config import Config

import celeryconfig as config

CLIENT_CONFIG = Config(
    connect_timeout=3,
    read_timeout=25,  # above the longest long poll
    retries={"mode": "standard", "max_attempts": 3},
    max_pool_connections=32,
)


@cache
def client(service: str) -> Any:
    """A thread-safe client for `service`; one per process (made after fork)."""
    options: dict[str, Any] = {"region_name": config.AWS_REGION, "config": CLIENT_CONFIG}
    if config.SQS_ENDPOINT_URL:
        options["endpoint_url"] = config.SQS_ENDPOINT_URL
    if config.AWS_ACCESS_KEY_ID:
        options["aws_access_key_id"] = config.AWS_ACCESS_KEY_ID
        options["aws_secret_access_key"] = config.AWS_SECRET_ACCESS_KEY
    return boto3.session.Session().client(service, **options)


@cache
def queue_url(name: str) -> str:
    return client("sqs").get_queue_url(QueueName=name)["QueueUrl"]


def queue_depth(name: str) -> dict[str, int]:
    """Visible and in-flight message counts of a queue (SQS's approximations)."""
    attributes = client("sqs").get_queue_attributes(
        QueueUrl=queue_url(name),
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return {
        "visible": int(attributes["ApproximateNumberOfMessages"]),
        "in_flight": int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    }


def message_attribute(message: dict[str, Any], name: str) -> str | None:
    """The string value of a received message's attribute, if it has one."""
    return message.get("MessageAttributes", {}).get(name, {}).get("StringValue")


def chunks(items: list[Any], size: int = 10) -> list[list[Any]]:
    """SQS batch calls take at most ten entries."""
    return [items[i : i + size] for i in range(0, len(items), size)]
