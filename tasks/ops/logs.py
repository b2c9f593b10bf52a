"""Log format: Celery's plain text by default, one JSON object a line with LOG_FORMAT=json.

`use_configured_format` is called once the process's logging is set up: by Celery's
``after_setup_logger`` / ``after_setup_task_logger`` signals in the worker and beat
(tasks/celery.py), when Flower starts (tasks/ops/flower.py), and by the metrics server.
It gives every handler of the loggers it is handed python-json-logger's formatter. A
line carries the time, level, logger, process, message and, inside a task, the task's
id and name; the pipeline's own lines add their fields (batch size, counts, duration,
tasks/batch.py and fetch.py). No line carries a record's values: messages and fields
hold counts, ids and reasons, as in text mode (tests/test_privacy.py scans both).
"""

from __future__ import annotations

import logging
from typing import Any

from celery._state import get_current_task
from pythonjsonlogger.json import JsonFormatter

import celeryconfig as config

FIELDS = ("asctime", "levelname", "name", "processName", "message")
RENAMED = {"asctime": "time", "levelname": "level", "name": "logger", "processName": "process"}


class PipelineJsonFormatter(JsonFormatter):
    """python-json-logger's formatter, with the current Celery task's id and name."""

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        super().add_fields(log_data, record, message_dict)
        task = get_current_task()
        if task is not None and task.request.id and "task_id" not in log_data:
            log_data["task_id"] = task.request.id
            log_data["task_name"] = task.name


def json_formatter() -> logging.Formatter:
    return PipelineJsonFormatter(list(FIELDS), rename_fields=RENAMED, json_ensure_ascii=False)


def use_configured_format(*loggers: logging.Logger) -> None:
    """With LOG_FORMAT=json, every handler of these loggers (root if none) writes JSON."""
    if config.LOG_FORMAT != "json":
        return
    for logger in loggers or (logging.getLogger(),):
        for handler in logger.handlers:
            handler.setFormatter(json_formatter())
