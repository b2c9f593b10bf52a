"""Reproductions, against stock Celery, kombu and Flower, of the failures four overrides fix
(docs/upstream.md), each beside what the override does instead. No broker, no worker:

    python dev/devkit/repro.py censor    tasks/ops/censor.py: secrets in `celery inspect conf`
    python dev/devkit/repro.py request   tasks/broker/request.py: a batch's raw records in `inspect reserved`
    python dev/devkit/repro.py control   tasks/broker/control.py: a reply queue per remote-control call
    python dev/devkit/repro.py broker    tasks/ops/flower.py: Flower's Broker page on SQS

Each prints both results and exits 0 while stock still fails; 3 when stock no longer
fails, which means the override may be deleted (its condition in docs/upstream.md).
The other overrides need a broker; their reproductions are in docs/upstream.md.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

from celery.app import utils as celery_utils
from celery.worker.request import Request
from kombu import Connection, pidbox
from kombu.serialization import dumps
from kombu.transport.base import Message
from kombu.utils.imports import symbol_by_name

STILL_FIXED_UPSTREAM = 3
ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
RAW_IP = "203.0.113.7"


class Outcome(NamedTuple):
    stock: str
    ours: str
    stock_fails: bool


def censor() -> Outcome:
    """Celery's filter on the settings `inspect conf` and Flower's Config tab show: a
    pristine copy of Celery's module beside the one the app has extended."""
    import tasks.celery  # noqa: F401  # the app installs tasks/ops/censor.py

    settings = {
        "broker_url": f"sqs://{ACCESS_KEY_ID}:secret@localhost:4566",
        "FLOWER_BASIC_AUTH": "admin:a long password",
    }
    stock = pristine("celery.app.utils").filter_hidden_settings(settings)
    ours = celery_utils.filter_hidden_settings(settings)
    leaked = ACCESS_KEY_ID in str(stock) or "a long password" in str(stock)
    return Outcome(str(stock), str(ours), leaked)


def pristine(module_name: str) -> Any:
    """A fresh copy of a module, as no override has touched it."""
    spec = importlib.util.find_spec(module_name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def batch_request(request_class: type[Request]) -> Request:
    """A worker's request for a batch task, as Celery's strategy builds it from the message."""
    from tasks.batch import mask_and_insert as task
    from tasks.celery import app

    records = [{"user_id": "u1", "ip": RAW_IP, "device_id": "d-1"}]
    sent = app.amqp.as_task_v2("repro-1", task.name, args=(records,), argsrepr="batch of 1 messages")
    content_type, encoding, body = dumps(sent.body, serializer="json")
    message = Message(
        body=body, headers=sent.headers, content_type=content_type, content_encoding=encoding,
        delivery_info={"exchange": "", "routing_key": "batches"}, properties=sent.properties,
    )  # fmt: skip
    return request_class(message, app=app, task=task)


def request() -> Outcome:
    """What `inspect reserved`, `scheduled` and `query_task` send: Request.info()."""
    from tasks.batch import mask_and_insert

    stock = batch_request(Request).info()
    ours = batch_request(symbol_by_name(mask_and_insert.Request)).info()  # the class the worker uses
    return Outcome(f"args={stock['args']!r}", f"args={ours['args']!r}", RAW_IP in str(stock))


def reply_queues(mailbox: pidbox.Mailbox, calls: int = 20) -> set[str]:
    """The reply queues of `calls` concurrent calls (each a mailbox copy, as Celery makes)."""
    copies = [mailbox(Connection("memory://")) for _ in range(calls)]
    return {copy.reply_queue.name for copy in copies}


def control() -> Outcome:
    from tasks.broker.control import Mailbox

    stock = reply_queues(pidbox.Mailbox("celery", type="fanout"))
    ours = reply_queues(Mailbox("celery", type="fanout"))
    return Outcome(queues_said(stock), queues_said(ours), len(stock) > 1)


def queues_said(names: set[str]) -> str:
    return f"20 calls of one thread, {len(names)} reply queue(s) (each an SQS queue)"


def broker() -> Outcome:
    """What Flower's Broker page asks for the broker's queues."""
    from flower.utils.broker import Broker

    from tasks.ops.flower import SqsBroker

    try:
        stock, fails = f"Broker('sqs://') gives {type(Broker('sqs://')).__name__}", False
    except NotImplementedError:
        stock, fails = "Broker('sqs://') raises NotImplementedError: the Broker page answers 500", True
    ours = f"{SqsBroker.__name__}: each queue's visible and in-flight counts (GetQueueAttributes)"
    return Outcome(stock, ours, fails)


REPRODUCTIONS: dict[str, Callable[[], Outcome]] = {
    "censor": censor,
    "request": request,
    "control": control,
    "broker": broker,
}


def main(argv: list[str] | Any = None) -> int:
    names = list(sys.argv[1:] if argv is None else argv) or list(REPRODUCTIONS)
    unknown = [name for name in names if name not in REPRODUCTIONS]
    if unknown:
        print(f"no reproduction {', '.join(unknown)}: choose from {', '.join(REPRODUCTIONS)}", file=sys.stderr)
        return 2
    code = 0
    for name in names:
        outcome = REPRODUCTIONS[name]()
        verdict = "FAILS on stock" if outcome.stock_fails else "no longer fails on stock: the override may go"
        print(f"{name}: {verdict}\n  stock: {outcome.stock}\n  ours:  {outcome.ours}")
        code = code if outcome.stock_fails else STILL_FIXED_UPSTREAM
    return code


if __name__ == "__main__":
    sys.exit(main())
