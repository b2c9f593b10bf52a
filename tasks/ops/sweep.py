"""`stack sweep`: remove what killed Flower, `inspect` or event processes left on SQS/SNS.

Processes that exit normally delete their own queues (tasks.transport). One killed
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


def _stale(url: str, cutoff: float) -> bool:
    name = url.rsplit("/", 1)[1]
    if REPLY not in name and EVENTS not in name:
        return False
    attributes = aws.client("sqs").get_queue_attributes(
        QueueUrl=url, AttributeNames=["CreatedTimestamp", "ApproximateNumberOfMessages"]
    )["Attributes"]
    old = float(attributes["CreatedTimestamp"]) < cutoff
    unread = int(attributes["ApproximateNumberOfMessages"]) > 0
    return old and (REPLY in name or unread)


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
