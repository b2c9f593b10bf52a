"""The data path, with no Celery import: source -> batching -> records -> masking -> store,
dead letters beside it; keys, versions, the retry policy, and `service` (what one batch
task does, as plain functions)."""
