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
   that waits for it. A reply with no local binding is delivered to the queue kombu
   names after the routing key (``<routing_key>.<exchange>``).
4. No-ack messages (pidbox, events) are deleted with the asynchronous client, which
   needs an event loop; a client process (`celery inspect`, Flower's event thread) has
   none and failed with ``'NoneType' object has no attribute 'on_close'``. Without a
   loop they are deleted with the synchronous client.
5. When SQS is unreachable, kombu's asynchronous receive hands its callback a list
   instead of a response, and the AttributeError killed the worker ("Unrecoverable
   error"). A failed receive is taken as no messages; the worker polls again after
   its polling interval and carries on once SQS is back.

Clean-up: SQS has no auto-delete queues. The per-process queues that kombu declares
``auto_delete`` (event receivers, pidbox and reply queues) are deleted, with their SNS
subscriptions, when the channel closes, and channels still open when the process exits
are closed then (pooled connections are otherwise never closed). Reply queues are kept
for reuse until then, since SQS refuses to re-create a queue name within 60 s of
deleting it. A process killed outright leaves its queues to `python -m tasks stack sweep`.
"""

from __future__ import annotations

import atexit
import logging
import weakref
from typing import Any

from kombu.transport import SQS

log = logging.getLogger(__name__)
REPLY_EXCHANGE_SUFFIX = ".pidbox"
_open_channels: weakref.WeakSet[Channel] = weakref.WeakSet()


@atexit.register
def _close_open_channels() -> None:
    for channel in list(_open_channels):
        try:
            channel.close()
        except Exception as exc:  # the broker may be gone; nothing more to do at exit
            log.debug("could not close channel at exit: %r", exc)


class Channel(SQS.Channel):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._own_queues: set[str] = set()
        _open_channels.add(self)

    @property
    def fanout_exchanges(self) -> frozenset[str]:
        return frozenset(self.transport_options.get("fanout_exchanges", ["celeryev"]))

    def exchange_declare(self, exchange: str | None = None, type: str = "direct", *args: Any, **kwargs: Any) -> Any:
        if exchange in self.fanout_exchanges and self.supports_fanout:
            type = "fanout"
        return super().exchange_declare(exchange, type, *args, **kwargs)

    def _lookup(self, exchange: str, routing_key: str, default: str | None = None) -> list[str]:
        is_reply = bool(exchange) and exchange.startswith("reply.") and exchange.endswith(REPLY_EXCHANGE_SUFFIX)
        if is_reply and not self.get_table(exchange):  # the waiting client bound it, not us
            return [f"{routing_key}.{exchange}"]
        return super()._lookup(exchange, routing_key, default)

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
        return super()._on_messages_ready(queue, qname, messages)

    def queue_declare(self, queue: str | None = None, passive: bool = False, **kwargs: Any) -> Any:
        declared = super().queue_declare(queue, passive, **kwargs)
        if kwargs.get("auto_delete"):
            self._own_queues.add(declared.queue)
        return declared

    def after_reply_message_received(self, queue: str) -> None:
        """Keep the reply queue for the next call; it is deleted on close."""

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


class Transport(SQS.Transport):
    Channel = Channel
    implements = SQS.Transport.implements.extend(exchange_type=frozenset(["direct", "fanout"]))
