"""The login pipeline: SQS login events, masked, into PostgreSQL, by Celery.

The data's path, one module each:

    login-queue --(source)--> fetch_batches (fetch) --batch task--> mask_and_insert (batch)
        batch: parse and validate (records) -> mask (masking, keys) -> insert (store)
        bad records ---------------------------------> login-queue-dlq (deadletter)

The Celery app (`celery -A tasks`, `from tasks import app`) is made on first use, not
on import of the package: `python -m tasks --help` then works, and a bad setting is
said in one line by the command layer (tasks/cli), whatever the configuration holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasks.celery import app

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    if name == "app":
        from tasks.celery import app

        return app
    raise AttributeError(f"module 'tasks' has no attribute {name!r}")
