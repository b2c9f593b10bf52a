"""tasks/broker/consumer.py without a worker: the Celery internals it relies on are still
there, and its consumer is the one the worker uses. Its behaviour is tested through a
real worker: tests/test_monitoring.py sees a batch's events arrive grouped."""

from __future__ import annotations

import inspect

from celery.events.dispatcher import EventDispatcher
from celery.events.receiver import EventReceiver
from celery.worker.consumer import Consumer as CeleryConsumer
from celery.worker.consumer import events

from tasks.broker.consumer import Consumer
from tasks.celery import app


def test_the_worker_uses_it() -> None:
    assert app.conf.worker_consumer == "tasks.broker.consumer:Consumer"
    assert issubclass(Consumer, CeleryConsumer)


def test_celery_buffers_task_events_and_asks_the_consumer_when_to_flush() -> None:
    step = inspect.getsource(events.Events.start)
    assert "buffer_group=['task'] if c.hub" in step
    assert "on_send_buffered=c.on_send_event_buffered" in step
    assert "self._flush_events_promise = promise(self._flush_events)" in inspect.getsource(CeleryConsumer.__init__)
    assert "self.event_dispatcher.flush()" in inspect.getsource(CeleryConsumer._flush_events)
    assert list(inspect.signature(CeleryConsumer.shutdown).parameters) == ["self"]


def test_a_group_is_one_message_the_receiver_unpacks() -> None:
    assert "'%s.multi' % group" in inspect.getsource(EventDispatcher.flush)
    assert "isinstance(body, list)" in inspect.getsource(EventReceiver._receive)
