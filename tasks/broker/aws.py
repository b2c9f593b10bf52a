"""boto3 clients for SQS and SNS, configured once from celeryconfig, and the one rule
every SQS/SNS client of the pipeline takes its credentials by.

**Credentials.** boto3's own chain decides, for every client: AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY in the environment, with AWS_SESSION_TOKEN when they are temporary,
come first; unset, the profile (AWS_PROFILE: credential_process, SSO, assume-role), web
identity, the container's and the instance's role. Only where SQS_ENDPOINT_URL is set
and the chain finds nothing are `test`/`test` used (LocalStack takes any). Every client
signs each request with the credentials object itself (`get_frozen_credentials()` per
request), never a key pair copied once: boto3's clients, the lean calls (`lean_sqs`),
kombu's transport, SNS events included (tasks/broker/transport.py), so refreshable ones
(a role's, credential_process's) are used after they rotate.

**TLS.** Every client verifies the endpoint's certificate with botocore's CA bundle, and
a certificate that does not verify is raised at once, never retried (tasks/broker/tls.py).

botocore logs whole request and response bodies at DEBUG (``botocore.endpoint``,
``botocore.parsers``): a ReceiveMessage response holds raw ip and device_id. Its loggers
are held at INFO whatever the log level (`quiet_botocore`, run on import), so
``--loglevel=DEBUG`` shows the pipeline's own debug lines and never a message body.
"""

from __future__ import annotations

import ipaddress
import logging
from functools import cache
from typing import Any
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import NoCredentialsError

import celeryconfig as config
from tasks.broker import tls
from tasks.broker.lean_sqs import LeanSQS

LOCALSTACK_CREDENTIALS = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}

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
    return LeanSQS(sqs.meta.endpoint_url, sqs.meta.region_name, credentials(), ca_bundle=tls.ca_bundle())


def session(region: str | None = None) -> boto3.session.Session:
    """A boto3 session whose credentials follow the rule (module docstring): boto3's
    chain, else `test` with an endpoint. Each session resolves the chain once; its
    refreshable credentials then refresh themselves."""
    return boto3.session.Session(region_name=region or config.AWS_REGION, **local_keys())


def local_keys() -> dict[str, str]:
    """LocalStack's `test` keys where SQS_ENDPOINT_URL is set and boto3's chain finds no
    credentials; else nothing (the chain decides)."""
    if config.SQS_ENDPOINT_URL and _chain_credentials(config.SQS_ENDPOINT_URL) is None:
        return LOCALSTACK_CREDENTIALS
    return {}


def _chain_credentials(endpoint: str) -> Any:
    """What boto3's chain finds. For an endpoint on this machine (LocalStack), without the
    instance metadata service: no instance role is meant for it, and asking would send a
    request off the machine (169.254.169.254) from every process that starts."""
    core = botocore.session.Session()
    if is_loopback_url(endpoint):
        core.get_component("credential_provider").remove("iam-role")
    return core.get_credentials()


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def endpoint_url() -> str:
    """SQS's endpoint as the clients resolve it (a client made only to ask)."""
    if config.SQS_ENDPOINT_URL:
        return config.SQS_ENDPOINT_URL
    asking = boto3.session.Session(region_name=config.AWS_REGION, **LOCALSTACK_CREDENTIALS).client("sqs")
    return str(asking.meta.endpoint_url)


def credentials() -> Any:
    """The credentials object the clients sign with (refreshable ones included): ask it
    for `get_frozen_credentials()` on every request, never keep a copy."""
    found = session().get_credentials()
    if found is None:
        raise NoCredentialsError()
    return found


def _new_client(service: str, client_config: Config) -> Any:
    options: dict[str, Any] = {"config": client_config}
    if config.SQS_ENDPOINT_URL:
        options["endpoint_url"] = config.SQS_ENDPOINT_URL
    return prepared(session().client(service, **options))


def prepared(client: Any) -> Any:
    """`client` asking for keep-alive, and raising a certificate that does not verify at once."""
    return tls.no_retry(asking_keep_alive(client))


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


# The metrics' queue-depth thread and `status` ask once, briefly: a hung endpoint costs
# them seconds, not minutes (the default client retries three times, 25 s each).
SCRAPE_CONFIG = Config(connect_timeout=2, read_timeout=5, retries={"mode": "standard", "max_attempts": 1})


@cache
def scrape_client() -> Any:
    """An SQS client for /metrics and `status`: one attempt per call, short timeouts."""
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
