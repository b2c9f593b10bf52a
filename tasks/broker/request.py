"""The worker's view of a batch task: its summary, never its records.

Celery's worker reports a task's request in many places: ``inspect active`` (only with
``safe=True``), ``reserved``, ``scheduled`` and ``query_task`` (always the raw
arguments), task events and the error log (the message's ``argsrepr`` header, or
the raw arguments when a producer left it out). A batch's arguments are its source
messages, with raw ip and device_id, so none of those may carry them.

``BatchRequest`` is the batch task's ``Request`` class (Celery's supported extension
point, ``Task.Request``). It works out the summary from the arguments it received,
without trusting the producer's header, and reports only that, so every client is
covered: Flower, `celery inspect`, events and logs. Private attributes written:
``_request_dict``, ``_argsrepr``, ``_kwargsrepr``; read: ``_args``.

Upstream: none filed; draft in docs/upstream.md (celery PR #6595 is related). Delete when
Celery reports ``argsrepr`` in every inspect reply by a setting and computes it in the
worker by a hook (`python dev/devkit/repro.py request` exits 3 with that setting).
"""

from __future__ import annotations

from typing import Any

from celery.worker.request import Request

HIDDEN_KWARGS = "{}"


def batch_summary(args: Any) -> str:
    """What a batch shows of itself: its size."""
    if isinstance(args, list | tuple) and args and isinstance(args[0], list | tuple):
        return f"batch of {len(args[0])} messages"
    return "batch (arguments withheld)"


class BatchRequest(Request):
    """A request whose every report (info, events, logs) carries the batch's summary."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._argsrepr = self._request_dict["argsrepr"] = batch_summary(self._args)
        self._kwargsrepr = self._request_dict["kwargsrepr"] = HIDDEN_KWARGS

    def info(self, safe: bool = False) -> dict[str, Any]:
        """The request as inspect reports it: always in safe mode (argsrepr, kwargsrepr)."""
        return super().info(safe=True)
