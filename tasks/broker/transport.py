"""kombu's SQS transport, made to carry Celery's remote control and task events.

Used through Celery's ``broker_transport = "tasks.broker.transport:Transport"``. Out of the
box, kombu 5.7's SQS transport leaves Flower and `celery inspect` blind:

1. ``Transport.implements`` declares only ``direct`` exchanges, so Celery turns remote
   control off. SQS can fan out through SNS (transport option ``supports_fanout``),
   so this transport declares ``fanout`` too.
2. Celery's event exchange (``celeryev``) is a topic exchange, which a virtual
   transport routes only to queues bound in the publishing process. Exchanges named
   in the transport option ``fanout_exchanges`` (default: ``celeryev``) are declared
   as fanout here, so events travel through an SNS topic to every listener's queue.
3. A pidbox reply goes to a direct exchange whose binding exists only in the client
   that waits for it. A reply for which no local binding matches its routing key is
   delivered to the queue kombu names after the routing key
   (``<routing_key>.<exchange>``), also where other reply bindings are known locally.
   A reply is sent only to a reply queue that exists: its client declared it before
   it asked. kombu's ``_put`` would create a missing one, and a reply that came after
   its client had given up and deleted its queue (a worker stopped for a while, then
   answering a backlog of ``inspect`` calls) made a queue that nobody would ever read
   or delete. The queue's URL is looked up without creating it (the transport's cache,
   else ``GetQueueUrl``); a queue that does not exist, also one whose URL the cache
   still holds though it was deleted since, means the client has gone, and the reply is
   dropped (logged at INFO, with the queue's name).
4. No-ack messages (pidbox, events) are deleted with the asynchronous client, which
   needs the event loop. kombu hands every channel the process-wide loop, so a client
   channel on another thread (`celery inspect`, Flower, a test) would use the worker's
   curl client from the wrong thread (``multi_perform() already running``, then a dead
   worker). The loop is used only from the thread it was registered on
   (``Transport.register_with_event_loop``); elsewhere a channel has no hub, consumes
   synchronously and deletes with the synchronous client.
5. When SQS is unreachable, kombu's asynchronous receive hands its callback a list
   instead of a response, and the AttributeError killed the worker ("Unrecoverable
   error"). A failed receive is taken as no messages; the worker polls again after
   its polling interval and carries on once SQS is back.
6. A receive that finishes after its channel closed (a warm shutdown, a reply queue
   deleted while polled) must not run kombu's ``_loop1``, which reads
   ``self.connection.polling_interval`` of a closed channel: the AttributeError came
   through the hub's timer and left the worker hanging after ``Warm shutdown``. A closed
   channel schedules nothing more, and makes what it still received visible again.
7. kombu's own boto3 clients (the hand-off's SendMessage, acks, events through SNS) ask
   for keep-alive by name, as the app's clients do (tasks/broker/aws.py): LocalStack
   closed their connection after every call, and each call paid a new one.
8. Credentials and TLS as every client of the pipeline (tasks/broker/aws.py, tls.py):
   where the broker URL names no keys (celeryconfig never puts them there), kombu's
   clients take boto3's chain, session token and refreshable credentials included (its
   SNS client too, made by the same ``_new_boto_client``), else LocalStack's `test`; a
   certificate that does not verify is raised at once. kombu's asynchronous receive
   verified against certifi's bundle alone: it verifies against botocore's
   (``AsyncSQSConnection.get_http_connection``, ``AsyncHTTPSConnection.getrequest``).
9. A message on a no-ack queue (a worker's pidbox and event queues, Flower's event and
   reply queues) reaches kombu only if it is kombu's envelope with a body Celery can
   read (tasks/broker/broadcast.py). Anyone who may publish to the pidbox or events SNS
   topic reaches those queues, and ``Message="not json at all"`` raised
   ``KeyError('properties')`` in the worker's event loop: every worker exited (issue 27).
   Such a message is deleted, counted and logged instead, both on the event loop's
   receive and on a client's synchronous one.

Every SQS call the broker makes has bounded timeouts and retries (the transport option
``client-config``, set in celeryconfig), so no call can hold a shutdown for minutes.

Clean-up: SQS has no auto-delete queues. The per-process queues that kombu declares
``auto_delete`` (event receivers, pidbox and reply queues) are deleted, with their SNS
subscriptions, when the channel closes. Answered reply queues are kept for reuse, since
kombu names them after ``id()`` of a per-call object, which can recur, and SQS refuses
to re-create a deleted name for 60 s; beyond the IDLE_REPLY_QUEUES most recent, a queue
idle for REPLY_QUEUE_IDLE_SECONDS is deleted. This app's clients name one reply queue
per thread (tasks/broker/control.py), so a Flower keeps one per executor thread; a
client of another app, whose names change per call, keeps those answered within
REPLY_QUEUE_IDLE_SECONDS. Channels still open when the
process exits are closed then. A process killed outright
leaves its queues to `python -m tasks sweep`.

kombu internals this module overrides or calls (pinned by tests/unit/test_transport.py
against the installed kombu): ``Channel._lookup``, ``Channel._put``, ``Channel._new_boto_client``,
``Channel._delete_message``, ``Channel._on_messages_ready``, ``Channel._release_messages``,
``Channel._loop1``, ``Channel._schedule_queue``, ``Channel._receive_message``,
``Channel._decode_python_message_body``, ``Channel._noack_queues``, ``Channel._new_queue``, ``Channel._delete``,
``Channel.after_reply_message_received``, ``Channel.canonical_queue_name``,
``Channel._queue_cache`` (the transport's map of SQS queue names to URLs; kombu's own
``_delete`` forgets a deleted queue under its unprefixed name, so the URL stayed: a
deleted queue is forgotten here under its SQS name), ``Channel.state.queue_bindings`` and
``queue_bindings_delete``, ``Transport.register_with_event_loop``, ``Channel.asynsqs``,
``AsyncConnection.get_http_connection`` and ``_httpclient``, ``AsyncHTTPSConnection.getrequest``. Options read:
``fanout_exchanges`` (default ``["celeryev"]``), ``supports_fanout``, ``client-config``.

Upstream (docs/upstream.md): points 1-2 build on kombu#2335 / kombu PR #2372 (SQS fanout
through SNS, merged) and answer celery#3197 and celery#4279; point 3's symptom is
celery#8348; points 4-7: none filed, drafts in docs/upstream.md. Delete each point when
`make conformance` (stock against ours) and tests/test_monitoring.py pass without it;
the module when none is left.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from typing import Any

from botocore.exceptions import ClientError
from kombu.asynchronous.aws.connection import AsyncHTTPSConnection
from kombu.transport import SQS

from tasks.broker import aws, broadcast, tls

log = logging.getLogger(__name__)
REPLY_EXCHANGE_SUFFIX = ".pidbox"
# Answered reply queues kept for reuse: our app's clients use one per thread
# (tasks/broker/control.py), and a Flower's executor has at most 32 threads.
IDLE_REPLY_QUEUES = 32
REPLY_QUEUE_IDLE_SECONDS = 120.0
# SQS's error codes for a queue that does not exist (query protocol, JSON protocol).
QUEUE_GONE = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})
_open_channels: weakref.WeakSet[Channel] = weakref.WeakSet()
# The thread each event loop (kombu Hub) runs on, as registered by Celery's consumer.
_hub_threads: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


@atexit.register
def _close_open_channels() -> None:
    for channel in list(_open_channels):
        try:
            channel.close()
        except Exception as exc:  # the broker may be gone; nothing more to do at exit
            log.debug("could not close channel at exit: %r", exc)


def is_reply_exchange(exchange: str | None) -> bool:
    return exchange is not None and exchange.startswith("reply.") and exchange.endswith(REPLY_EXCHANGE_SUFFIX)


def is_reply_queue(queue: str) -> bool:
    """A client's reply queue: ``<oid>.<reply exchange>``, as kombu's pidbox names it."""
    return is_reply_exchange(queue.partition(".")[2])


def queue_is_gone(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") in QUEUE_GONE


class Channel(SQS.Channel):
    _hub: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._own_queues: set[str] = set()
        self._answered: dict[str, float] = {}  # reply queue -> when its replies arrived
        super().__init__(*args, **kwargs)
        _open_channels.add(self)

    @property
    def hub(self) -> Any:
        """The event loop, but only on the thread it runs on (point 4)."""
        hub = self._hub
        if hub is None:
            return None
        thread = _hub_threads.get(hub)
        return hub if thread is None or thread == threading.get_ident() else None

    @hub.setter
    def hub(self, value: Any) -> None:
        self._hub = value

    @property
    def fanout_exchanges(self) -> frozenset[str]:
        return frozenset(self.transport_options.get("fanout_exchanges", ["celeryev"]))

    def exchange_declare(self, exchange: str | None = None, type: str = "direct", *args: Any, **kwargs: Any) -> Any:
        if exchange in self.fanout_exchanges and self.supports_fanout:
            type = "fanout"
        return super().exchange_declare(exchange, type, *args, **kwargs)

    def _lookup(self, exchange: str, routing_key: str, default: str | None = None) -> list[str]:
        if is_reply_exchange(exchange):
            bound = [queue for key, _, queue in self.get_table(exchange) if key == routing_key]
            return bound or [f"{routing_key}.{exchange}"]  # the waiting client bound it, not us
        return super()._lookup(exchange, routing_key, default)

    def _new_boto_client(
        self,
        service: Any,
        region: Any,
        access_key_id: str | None,
        secret_access_key: str | None,
        session_token: str | None = None,
        config: Any = None,
    ) -> Any:
        """kombu's own clients (the hand-off's SendMessage, acks, events through SNS) keep
        their connections too (point 7), take their credentials by the pipeline's rule and
        refuse an untrusted certificate at once (point 8)."""
        if not access_key_id:  # no keys in the broker URL: boto3's chain, else LocalStack's
            local = aws.local_keys()
            access_key_id, secret_access_key = local.get("aws_access_key_id"), local.get("aws_secret_access_key")
        client = super()._new_boto_client(service, region, access_key_id, secret_access_key, session_token, config)
        return aws.prepared(client)

    def asynsqs(self, queue: str | None = None) -> Any:
        """kombu's asynchronous client, verifying with botocore's CA bundle (point 8)."""
        connection = super().asynsqs(queue)
        connection.get_http_connection = lambda: BundleVerified(http_client=connection._httpclient)
        return connection

    def _put(self, queue: str, message: dict, **kwargs: Any) -> None:
        """Send a message; a reply only to a reply queue that still exists (point 3)."""
        if not is_reply_queue(queue):
            return super()._put(queue, message, **kwargs)
        name = self.canonical_queue_name(queue)
        try:
            if name not in self._queue_cache:  # so that kombu's _put finds it and creates nothing
                self._queue_cache[name] = self.sqs(queue=name).get_queue_url(QueueName=name)["QueueUrl"]
            super()._put(queue, message, **kwargs)
        except ClientError as exc:
            if not queue_is_gone(exc):
                raise
            self._queue_cache.pop(name, None)
            log.info("reply dropped: its client has gone (queue %s no longer exists)", name)

    def _delete_message(self, queue_name: str, message: dict) -> None:
        if self.hub is not None:
            return super()._delete_message(queue_name, message)
        self.sqs(queue=queue_name).delete_message(
            QueueUrl=self._new_queue(queue_name), ReceiptHandle=message["ReceiptHandle"]
        )

    def _on_messages_ready(self, queue: str, qname: str, messages: Any) -> int:
        if not isinstance(messages, dict):
            log.warning("receive from %s failed (SQS unreachable?); polling again", qname)
            return 0
        if self.closed or self.connection is None:  # point 6: received after the close
            if messages.get("Messages"):
                self._release_messages(queue, qname, messages["Messages"])
            return 0
        if messages.get("Messages"):
            messages["Messages"] = self._well_formed(qname, messages["Messages"])
        return super()._on_messages_ready(queue, qname, messages)

    def _receive_message(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        """A client's synchronous receive (Flower's events, `inspect` replies): point 8."""
        response = super()._receive_message(queue, *args, **kwargs)
        if isinstance(response, dict) and response.get("Messages"):
            response["Messages"] = self._well_formed(queue, response["Messages"])
        return response

    def _broadcast_kind(self, queue: str) -> broadcast.Kind:
        exchanges = {binding[0] for binding in self.state.queue_bindings(queue)}
        if exchanges & self.fanout_exchanges:
            return "events"
        return "reply" if any(is_reply_exchange(e) for e in exchanges) else "pidbox"

    def _well_formed(self, queue: str, messages: list) -> list:
        """The messages kombu may take (point 8); on a no-ack queue, the others are deleted
        and counted."""
        if queue not in self._noack_queues:
            return messages
        kind, kept = self._broadcast_kind(queue), []
        for message in messages:
            why = broadcast.problem(message["Body"], kind, self._decode_python_message_body)
            if why is None:
                kept.append(message)
                continue
            broadcast.dropped(queue, kind, why)
            try:
                self._delete_message(queue, message)
            except Exception as exc:  # no-ack: it comes back after its visibility timeout, and is dropped again
                log.debug("could not delete a dropped message on %s: %r", queue, exc)
        return kept

    def _polling(self) -> bool:
        """Whether the asynchronous receive loop goes on: not once the channel closed
        (point 6), and not when the loop's timers fire on another thread (point 4): Celery
        fires them from a thread of its own while the pool drains at shutdown."""
        return not (self.closed or self.connection is None) and self.hub is not None

    def _loop1(self, queue: str, messages_fetched: Any = None) -> None:
        if self._polling():
            super()._loop1(queue, messages_fetched)

    def _schedule_queue(self, queue: str) -> None:
        if self._polling():
            super()._schedule_queue(queue)

    def queue_declare(self, queue: str | None = None, passive: bool = False, **kwargs: Any) -> Any:
        if queue is not None:
            self._answered.pop(queue, None)  # in use again
        declared = super().queue_declare(queue, passive, **kwargs)
        if kwargs.get("auto_delete"):
            self._own_queues.add(declared.queue)
        return declared

    def after_reply_message_received(self, queue: str) -> None:
        """Keep an answered reply queue for reuse, and prune the idle ones.

        kombu names a reply queue after ``id()`` of a per-call mailbox copy: mostly a new
        name per call (this app's clients use one per thread instead, tasks/broker/control.py),
        now and then one seen before. A name in use again
        must still exist (SQS refuses to re-create a name for 60 s after deleting it), so
        answered queues are kept, and only the least recently used beyond
        ``IDLE_REPLY_QUEUES``, idle for ``REPLY_QUEUE_IDLE_SECONDS``, are deleted.
        """
        self._answered[queue] = time.monotonic()
        self._prune_answered(time.monotonic())

    def _prune_answered(self, now: float) -> None:
        oldest_first = sorted(self._answered, key=self._answered.__getitem__)
        for queue in oldest_first[: max(0, len(oldest_first) - IDLE_REPLY_QUEUES)]:
            if now - self._answered[queue] < REPLY_QUEUE_IDLE_SECONDS:
                return
            del self._answered[queue]
            self._own_queues.discard(queue)
            self._delete_own_queue(queue)

    def close(self) -> None:
        _open_channels.discard(self)
        own, self._own_queues = self._own_queues, set()
        if not self.closed:
            for queue in own:
                self._delete_own_queue(queue)
        super().close()

    def _delete_own_queue(self, queue: str) -> None:
        try:
            for exchange in {binding[0] for binding in self.state.queue_bindings(queue)} or {None}:
                self._delete(queue, exchange)
            self.state.queue_bindings_delete(queue)
        except Exception as exc:  # best effort: the broker may be gone already
            log.debug("could not delete queue %s: %r", queue, exc)
        finally:  # a later declare must not find a dead URL, nor a reply be sent to one
            self._queue_cache.pop(self.canonical_queue_name(queue), None)


class BundleVerified(AsyncHTTPSConnection):
    """kombu's asynchronous HTTPS request, verified against botocore's CA bundle
    (AWS_CA_BUNDLE) where one is configured: kombu's own verifies against certifi's alone
    (``AsyncHTTPSConnection.getrequest``), so a private CA's endpoint failed every receive.
    No kombu issue names it (none found when this was written); delete this once kombu's
    asynchronous client verifies with its boto3 client's ``verify``."""

    def getrequest(self) -> Any:
        request = super().getrequest()
        bundle = tls.ca_bundle()
        if bundle:
            request.ca_certs = bundle
        return request


class Transport(SQS.Transport):
    Channel = Channel
    implements = SQS.Transport.implements.extend(exchange_type=frozenset(["direct", "fanout"]))

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        _hub_threads[loop] = threading.get_ident()
        return super().register_with_event_loop(connection, loop)
