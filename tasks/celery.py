"""The Celery application (`celery -A tasks worker|beat|flower`)."""

from __future__ import annotations

from celery import Celery

app = Celery("tasks", include=["tasks.fetch", "tasks.batch", "tasks.ops.health"])
app.config_from_object("celeryconfig")
