"""`sweep`: remove what killed Flower, `inspect` or event processes left on SQS/SNS.

Processes that exit normally delete their own queues, and a worker's late reply to a
client that has gone creates none (tasks/broker/transport.py, point 3). One killed
outright leaves its event queue (``celeryev-<uuid>``) and reply queues
(``<oid>-reply-celery-pidbox``), and their SNS subscriptions. Sweep deletes, among
queues older than the given age, event queues that hold unread events (nobody consumes
them: a live listener keeps its queue drained) and reply queues, and then every
subscription of our topics whose queue no longer exists. A reply queue cannot tell a
live owner from a dead one, so sweep is an operator's command, not a scheduled task:
run it when no Flower or `inspect` has been running longer than the age given.
"""

from __future__ import annotations

import time

from botocore.exceptions import ClientError

import celeryconfig as config
from tasks.broker import aws

REPLY, EVENTS = "-reply-celery-pidbox", "celeryev-"


def is_per_process(name: str) -> bool:
    """A queue one Flower, `inspect` or event listener made for itself."""
    return REPLY in name or EVENTS in name


def is_stale(name: str, created: float, unread: int, cutoff: float) -> bool:
    """Older than the cutoff, and a reply queue, or an event queue nobody drains."""
    return is_per_process(name) and created < cutoff and (REPLY in name or unread > 0)


def _stale(url: str, cutoff: float) -> bool:
    name = url.rsplit("/", 1)[1]
    if not is_per_process(name):
        return False
    attributes = aws.client("sqs").get_queue_attributes(
        QueueUrl=url, AttributeNames=["CreatedTimestamp", "ApproximateNumberOfMessages"]
    )["Attributes"]
    return is_stale(name, float(attributes["CreatedTimestamp"]), int(attributes["ApproximateNumberOfMessages"]), cutoff)


def stale_queues(older_than: float) -> list[str]:
    sqs, cutoff = aws.client("sqs"), time.time() - older_than
    urls = sqs.list_queues(QueueNamePrefix=config.CELERY_QUEUE_PREFIX).get("QueueUrls", [])
    return [u for u in urls if _stale(u, cutoff)]


def _queue_exists(arn: str) -> bool:
    try:
        aws.client("sqs").get_queue_url(QueueName=arn.rsplit(":", 1)[1])
    except ClientError:
        return False
    return True


def orphan_subscriptions() -> list[str]:
    sns, orphans = aws.client("sns"), []
    for page in sns.get_paginator("list_subscriptions").paginate():
        for sub in page["Subscriptions"]:
            ours = sub["TopicArn"].rsplit(":", 1)[1].startswith(config.CELERY_QUEUE_PREFIX)
            if ours and sub["Protocol"] == "sqs" and not _queue_exists(sub["Endpoint"]):
                orphans.append(sub["SubscriptionArn"])
    return orphans


def sweep(older_than: float = 3600) -> dict[str, int]:
    queues = stale_queues(older_than)
    for url in queues:
        aws.client("sqs").delete_queue(QueueUrl=url)
    subscriptions = orphan_subscriptions()
    for arn in subscriptions:
        aws.client("sns").unsubscribe(SubscriptionArn=arn)
    return {"queues": len(queues), "subscriptions": len(subscriptions)}
