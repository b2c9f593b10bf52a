"""The retention task: beat runs it every RETENTION_INTERVAL seconds when RETENTION_DAYS
is set, and it deletes rows past the limit in short batches (tasks.pipeline.retention)."""

from __future__ import annotations

import logging
from typing import Any

import celeryconfig as config
from tasks.celery import app
from tasks.pipeline import retention
from tasks.pipeline.service import pipeline

log = logging.getLogger(__name__)


@app.task(name="tasks.expire_old_logins", ignore_result=True)
def expire_old_logins() -> dict[str, Any]:
    if not config.RETENTION_DAYS:
        return {"deleted": 0, "finished": True}
    pipe = pipeline()
    try:
        outcome = retention.expire(
            pipe.connection(), config.RETENTION_DAYS, config.RETENTION_BATCH_ROWS, config.RETENTION_INTERVAL / 2
        )
    except BaseException:
        pipe.reset()
        raise
    log.info("retention: deleted %d rows older than %d days", outcome.deleted, config.RETENTION_DAYS)
    return {"deleted": outcome.deleted, "finished": outcome.finished}
