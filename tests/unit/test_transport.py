"""tasks/broker/transport.py without a broker: the kombu internals it relies on are still
there with the same signatures (an upgrade fails here, at once), and its decisions."""

from __future__ import annotations

import inspect
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from botocore.exceptions import ClientError
from kombu.asynchronous import Hub
from kombu.transport import SQS
from kombu.transport.virtual.base import BrokerState

from tasks.broker import transport
from tasks.broker.transport import Channel, is_reply_exchange, is_reply_queue

# What the transport overrides or calls in kombu, and the parameters it passes.
KOMBU_INTERNALS = {
    (SQS.Channel, "_lookup"): ["self", "exchange", "routing_key", "default"],
    (SQS.Channel, "_put"): ["self", "queue", "message", "kwargs"],
    (SQS.Channel, "_new_boto_client"): [
        "self",
        "service",
        "region",
        "access_key_id",
        "secret_access_key",
        "session_token",
        "config",
    ],
    (SQS.Channel, "canonical_queue_name"): ["self", "queue_name"],
    (SQS.Channel, "_delete_message"): ["self", "queue_name", "message"],
    (SQS.Channel, "_on_messages_ready"): ["self", "queue", "qname", "messages"],
    (SQS.Channel, "_release_messages"): ["self", "queue", "qname", "messages"],
    (SQS.Channel, "_loop1"): ["self", "queue", "messages_fetched"],
    (SQS.Channel, "_schedule_queue"): ["self", "queue"],
    (SQS.Channel, "_new_queue"): ["self", "queue", "kwargs"],
    (SQS.Channel, "_delete"): ["self", "queue", "exchange", "args", "kwargs"],
    (SQS.Channel, "after_reply_message_received"): ["self", "queue"],
    (SQS.Channel, "queue_declare"): ["self", "queue", "passive", "kwargs"],
    (SQS.Transport, "register_with_event_loop"): ["self", "connection", "loop"],
    (BrokerState, "queue_bindings"): ["self", "queue"],
    (BrokerState, "queue_bindings_delete"): ["self", "queue"],
}


@pytest.mark.parametrize(("owner", "name"), list(KOMBU_INTERNALS), ids=lambda v: getattr(v, "__name__", v))
def test_the_kombu_internals_it_relies_on_keep_their_signatures(owner: type, name: str) -> None:
    assert list(inspect.signature(getattr(owner, name)).parameters) == KOMBU_INTERNALS[(owner, name)]


def bare_channel(**attributes: Any) -> Channel:
    """A Channel with no broker behind it: only what a method under test reads."""
    channel = Channel.__new__(Channel)
    channel._own_queues = set()
    for name, value in attributes.items():
        setattr(channel, name, value)
    return channel


class Sent(Exception):
    def __init__(self, request: Any) -> None:
        self.request = request


@pytest.mark.parametrize("service", ["sns", "sqs"])
def test_kombus_own_clients_ask_for_keep_alive(service: str) -> None:
    """Events (SNS), the hand-off's SendMessage and acks (SQS) keep their connection."""
    options = {"client-config": {}, "is_secure": False}
    broker = SimpleNamespace(transport_options=options, hostname="127.0.0.1", port=4566)
    channel = bare_channel(connection=SimpleNamespace(client=broker))
    client = channel._new_boto_client(service, "eu-west-1", "key", "secret")

    def stop(request: Any, **_: Any) -> None:
        raise Sent(request)

    client.meta.events.register("before-send", stop)  # after the transport's own handler
    with pytest.raises(Sent) as sent:
        if service == "sns":
            client.publish(TopicArn="arn:aws:sns:eu-west-1:000000000000:celeryev", Message="{}")
        else:
            client.send_message(QueueUrl="http://127.0.0.1:4566/000000000000/batches", MessageBody="{}")
    assert sent.value.request.headers["Connection"] == "keep-alive"


def test_a_reply_goes_to_its_bound_queue_or_to_the_one_named_after_its_routing_key() -> None:
    exchange = "reply.celery.pidbox"
    table = [("key-a", "", "queue-a"), ("key-b", "", "queue-b")]
    channel = bare_channel(get_table=lambda _: table)
    assert channel._lookup(exchange, "key-a") == ["queue-a"]
    # other reply bindings are known here, none for this key: the client's own queue
    assert channel._lookup(exchange, "key-c") == [f"key-c.{exchange}"]
    assert bare_channel(get_table=lambda _: [])._lookup(exchange, "key-d") == [f"key-d.{exchange}"]
    assert is_reply_exchange(exchange) and not is_reply_exchange("celeryev")


def test_the_event_loop_is_used_only_on_the_thread_it_runs_on() -> None:
    hub = Hub()
    channel = bare_channel(hub=hub)
    assert channel.hub is hub  # not registered yet: as kombu gives it
    transport._hub_threads[hub] = threading.get_ident()
    assert channel.hub is hub
    seen: list[Any] = []
    other = threading.Thread(target=lambda: seen.append(channel.hub))
    other.start()
    other.join()
    assert seen == [None]  # another thread: no hub, so synchronous calls


def test_a_closed_channel_schedules_nothing_and_releases_what_it_still_received() -> None:
    released: list[Any] = []
    channel = bare_channel(closed=True, connection=None, _release_messages=lambda *a: released.append(a))
    channel._loop1("q")  # kombu's would read self.connection.polling_interval
    channel._schedule_queue("q")
    assert channel._on_messages_ready("url", "q", {"Messages": [{"ReceiptHandle": "r"}]}) == 0
    assert released == [("url", "q", [{"ReceiptHandle": "r"}])]
    assert channel._on_messages_ready("url", "q", ["a failed receive"]) == 0


def test_the_loops_timers_fired_on_another_thread_poll_nothing() -> None:
    """Celery fires the loop's timers from a thread of its own while the pool drains at
    shutdown; kombu's _loop1 would call hub.call_later there, on a hub it does not see."""
    hub = Hub()
    transport._hub_threads[hub] = threading.get_ident()
    scheduled: list[str] = []
    channel = bare_channel(hub=hub, closed=False, connection=SimpleNamespace(polling_interval=1))
    channel._get_bulk_async = lambda queue, callback=None: scheduled.append(queue)
    errors: list[BaseException] = []

    def off_the_loops_thread() -> None:
        try:
            channel._loop1("q")
            channel._schedule_queue("q")
        except BaseException as exc:
            errors.append(exc)

    other = threading.Thread(target=off_the_loops_thread)
    other.start()
    other.join()
    assert errors == [] and scheduled == [] and not hub.timer.queue


def test_answered_reply_queues_are_kept_for_reuse_and_only_the_idle_surplus_deleted() -> None:
    deleted: list[str] = []
    count = transport.IDLE_REPLY_QUEUES + 3
    cache = {f"q{n}.reply.celery.pidbox": f"url-{n}" for n in range(count)}
    channel = bare_channel(
        _delete_own_queue=deleted.append, _answered={}, connection=SimpleNamespace(_queue_cache=cache)
    )
    for n in range(count):
        channel._answered[f"q{n}.reply.celery.pidbox"] = 1000.0 + n  # answered long ago, in order
    channel._prune_answered(now=1000.0 + 60)  # not idle long enough: all kept
    assert deleted == []
    channel._prune_answered(now=1000.0 + 600)
    assert deleted == ["q0.reply.celery.pidbox", "q1.reply.celery.pidbox", "q2.reply.celery.pidbox"]
    assert len(channel._answered) == transport.IDLE_REPLY_QUEUES


REPLY_QUEUE = "oid-1.reply.celery.pidbox"
SQS_NAME = "p-oid-1-reply-celery-pidbox"  # prefixed, "." made "-", as kombu names it on SQS


class FakeSQS:
    """SQS as the transport's reply path sees it: which queues exist, what was sent."""

    def __init__(self, existing: set[str]) -> None:
        self.existing, self.sent, self.created = existing, [], []

    def _gone(self, operation: str) -> ClientError:
        error = {"Code": "AWS.SimpleQueueService.NonExistentQueue", "Message": "gone"}
        return ClientError({"Error": error}, operation)

    def get_queue_url(self, QueueName: str) -> dict:
        if QueueName not in self.existing:
            raise self._gone("GetQueueUrl")
        return {"QueueUrl": f"http://sqs/{QueueName}"}

    def send_message(self, QueueUrl: str, MessageBody: str) -> None:
        if QueueUrl.rsplit("/", 1)[1] not in self.existing:
            raise self._gone("SendMessage")
        self.sent.append(QueueUrl)

    def create_queue(self, QueueName: str, Attributes: dict) -> dict:
        self.created.append(QueueName)
        self.existing.add(QueueName)
        return {"QueueUrl": f"http://sqs/{QueueName}"}

    def list_queues(self, QueueNamePrefix: str) -> dict:
        return {"QueueUrls": [f"http://sqs/{q}" for q in self.existing if q.startswith(QueueNamePrefix)]}


def replying_channel(sqs: FakeSQS, cache: dict[str, str]) -> Channel:
    options = {"queue_name_prefix": "p-", "sqs_base64_encoding": False}
    client = SimpleNamespace(transport_options=options)
    state = SimpleNamespace(queue_bindings=lambda queue: [], queue_bindings_delete=lambda queue: None)
    connection = SimpleNamespace(_queue_cache=cache, client=client, state=state)
    return bare_channel(connection=connection, sqs=lambda queue=None: sqs)


def test_a_reply_goes_to_an_existing_reply_queue_and_never_creates_one() -> None:
    sqs, cache = FakeSQS({SQS_NAME}), {}
    replying_channel(sqs, cache)._put(REPLY_QUEUE, {"body": "pong"})
    assert sqs.sent == [f"http://sqs/{SQS_NAME}"] and cache == {SQS_NAME: f"http://sqs/{SQS_NAME}"}
    gone, cache = FakeSQS(set()), {}
    replying_channel(gone, cache)._put(REPLY_QUEUE, {"body": "a late pong"})  # its client has gone
    assert gone.created == [] and gone.sent == [] and cache == {}
    assert is_reply_queue(REPLY_QUEUE) and not is_reply_queue("batches") and not is_reply_queue("w1@host.celery.pidbox")


def test_a_reply_to_a_queue_deleted_since_its_url_was_cached_is_dropped_and_the_url_forgotten() -> None:
    sqs, cache = FakeSQS(set()), {SQS_NAME: f"http://sqs/{SQS_NAME}"}
    replying_channel(sqs, cache)._put(REPLY_QUEUE, {"body": "a late pong"})
    assert sqs.created == [] and sqs.sent == [] and cache == {}


def test_other_messages_still_go_through_kombus_put_which_creates_what_is_missing() -> None:
    sqs = FakeSQS(set())
    replying_channel(sqs, {})._put("batches", {"body": "a task"})
    assert sqs.created == ["p-batches"] and sqs.sent == ["http://sqs/p-batches"]


def test_a_deleted_queue_is_forgotten_under_its_sqs_name() -> None:
    """kombu's _delete forgets it under the unprefixed name, which is not the cache's key."""
    cache = {SQS_NAME: f"http://sqs/{SQS_NAME}"}
    channel = replying_channel(FakeSQS({SQS_NAME}), cache)
    channel._delete = lambda queue, exchange=None: None
    channel._delete_own_queue(REPLY_QUEUE)
    assert cache == {}
