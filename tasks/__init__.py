"""The login pipeline: SQS login events, masked, into PostgreSQL, by Celery.

The data's path, one module each:

    login-queue --(source)--> fetch_batches (fetch) --batch task--> mask_and_insert (batch)
        batch: parse and validate (records) -> mask (masking, keys) -> insert (store)
        bad records ---------------------------------> login-queue-dlq (deadletter)
"""

from tasks.celery import app

__all__ = ["app"]
