"""boto3 clients for SQS and SNS, configured once from celeryconfig.

botocore logs whole request and response bodies at DEBUG (``botocore.endpoint``,
``botocore.parsers``): a ReceiveMessage response holds raw ip and device_id. Its loggers
are held at INFO whatever the log level (`quiet_botocore`, run on import), so
``--loglevel=DEBUG`` shows the pipeline's own debug lines and never a message body.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import boto3
import botocore.session
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import NoCredentialsError

import celeryconfig as config
from tasks.broker.lean_sqs import LeanSQS

BODY_LOGGERS = ("botocore", "boto3", "urllib3")


def quiet_botocore() -> None:
    """Hold the loggers that could print message bodies at INFO."""
    for name in BODY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)


quiet_botocore()

CLIENT_CONFIG = Config(
    connect_timeout=3,
    read_timeout=25,  # above the longest long poll
    retries={"mode": "standard", "max_attempts": 3},
    max_pool_connections=32,
)


@cache
def client(service: str) -> Any:
    """A thread-safe client for `service`; one per process (made after fork)."""
    return _new_client(service, CLIENT_CONFIG)


@cache
def lean_sqs() -> Any:
    """The fetch's ReceiveMessage and DeleteMessageBatch without botocore's CPU cost
    (tasks.broker.lean_sqs), with the SQS client's endpoint, region, credentials and CA
    bundle (botocore's `ca_bundle`: AWS_CA_BUNDLE or the config file); the boto3 client
    itself where a proxy applies to the endpoint."""
    sqs = client("sqs")
    endpoint = urlsplit(sqs.meta.endpoint_url)
    if endpoint.scheme in getproxies() and not proxy_bypass(endpoint.hostname or ""):
        logging.getLogger(__name__).info("a proxy applies to SQS: the fetch's SQS calls go through boto3")
        return sqs
    ca_bundle = botocore.session.get_session().get_config_variable("ca_bundle")  # as boto3 resolves it
    return LeanSQS(sqs.meta.endpoint_url, sqs.meta.region_name, credentials(), ca_bundle=ca_bundle)


def credentials() -> Any:
    """The credentials the clients use: the configured keys, else boto3's usual chain
    (refreshable ones, such as a pod's role, refresh themselves)."""
    if config.AWS_ACCESS_KEY_ID:
        return Credentials(config.AWS_ACCESS_KEY_ID, config.AWS_SECRET_ACCESS_KEY)
    found = boto3.session.Session().get_credentials()
    if found is None:
        raise NoCredentialsError()
    return found


def _new_client(service: str, client_config: Config) -> Any:
    options: dict[str, Any] = {"region_name": config.AWS_REGION, "config": client_config}
    if config.SQS_ENDPOINT_URL:
        options["endpoint_url"] = config.SQS_ENDPOINT_URL
    if config.AWS_ACCESS_KEY_ID:
        options["aws_access_key_id"] = config.AWS_ACCESS_KEY_ID
        options["aws_secret_access_key"] = config.AWS_SECRET_ACCESS_KEY
    return asking_keep_alive(boto3.session.Session().client(service, **options))


def asking_keep_alive(client: Any) -> Any:
    """`client`, asking for keep-alive by name on every request: LocalStack's hypercorn
    closes any other connection after one request, so every call would pay a new TCP
    connection, on both sides (real SQS and SNS keep connections anyway)."""
    client.meta.events.register("before-send", _keep_alive)
    return client


def _keep_alive(request: Any, **_: Any) -> None:
    request.headers["Connection"] = "keep-alive"


def client_without_validation(service: str) -> Any:
    """A client that skips botocore's parameter validation (the bench compares its CPU)."""
    return _new_client(service, CLIENT_CONFIG.merge(Config(parameter_validation=False)))


# A scrape asks once, briefly: Prometheus gives up on a scrape after 10 s by default.
SCRAPE_CONFIG = Config(connect_timeout=2, read_timeout=5, retries={"mode": "standard", "max_attempts": 1})


@cache
def scrape_client() -> Any:
    """An SQS client for /metrics: one attempt per call, short timeouts."""
    return _new_client("sqs", SCRAPE_CONFIG)


@cache
def queue_url(name: str, sqs: Any = None) -> str:
    return (sqs or client("sqs")).get_queue_url(QueueName=name)["QueueUrl"]


def queue_depth(name: str, sqs: Any = None) -> dict[str, int]:
    """Visible and in-flight message counts of a queue (SQS's approximations)."""
    attributes = (sqs or client("sqs")).get_queue_attributes(
        QueueUrl=queue_url(name, sqs),
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return {
        "visible": int(attributes["ApproximateNumberOfMessages"]),
        "in_flight": int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    }


def message_attribute(message: dict[str, Any], name: str) -> str | None:
    """The string value of a received message's attribute, if it has one (None for
    anything else: a Binary attribute, or a shape SQS would not send)."""
    attributes = message.get("MessageAttributes")
    attribute = attributes.get(name) if isinstance(attributes, dict) else None
    value = attribute.get("StringValue") if isinstance(attribute, dict) else None
    return value if isinstance(value, str) else None


def chunks(items: list[Any], size: int = 10) -> list[list[Any]]:
    """SQS batch calls take at most ten entries."""
    return [items[i : i + size] for i in range(0, len(items), size)]
