"""Every setting of the login pipeline, read from the environment.

Upper-case names are the pipeline's own settings; lower-case names are Celery's.
Defaults fit the embedded stack (`python -m tasks stack up`): LocalStack on
localhost:4566 and the PostgreSQL server the stack started. Point the same
variables at real AWS and a managed PostgreSQL for production (README,
"Configuration").
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote, urlsplit

from kombu import Exchange, Queue


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def _bool(name: str, default: bool) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in ("1", "true", "yes", "on")


# --- The embedded stack --------------------------------------------------------
STACK_DIR = Path(_env("STACK_DIR", str(Path(__file__).resolve().parent / ".stack")))
LOCALSTACK_PORT = _int("LOCALSTACK_PORT", 4566)
# LocalStack's own virtual environment (its pins never touch the app's).
LOCALSTACK_VENV = Path(_env("LOCALSTACK_VENV", str(STACK_DIR / "localstack-venv")))

# --- AWS: SQS (source, dead letters, Celery's broker) ---------------------------
AWS_REGION = _env("AWS_DEFAULT_REGION", "us-east-1")
# Empty means real AWS (boto3's own endpoint resolution and credential chain).
SQS_ENDPOINT_URL = _env("SQS_ENDPOINT_URL", f"http://localhost:{LOCALSTACK_PORT}")
AWS_ACCESS_KEY_ID = _env("AWS_ACCESS_KEY_ID", "test" if SQS_ENDPOINT_URL else "")
AWS_SECRET_ACCESS_KEY = _env("AWS_SECRET_ACCESS_KEY", "test" if SQS_ENDPOINT_URL else "")
SOURCE_QUEUE = _env("SOURCE_QUEUE", "login-queue")
DEAD_LETTER_QUEUE = _env("DEAD_LETTER_QUEUE", "login-queue-dlq")
# Receives of a source message before SQS itself moves it to the dead-letter queue
# (a message that a fetch took but never handed off, again and again).
SOURCE_MAX_RECEIVES = _int("SOURCE_MAX_RECEIVES", 10)
# Keep the original body in dead letters, so `redrive` can replay them. The body
# holds the raw ip and device_id: turn this off where the DLQ must hold no PII.
DEAD_LETTER_KEEP_BODY = _bool("DEAD_LETTER_KEEP_BODY", True)

# --- Fetch: source queue -> batches ---------------------------------------------
BATCH_SIZE = _int("BATCH_SIZE", 500)
# A batch task message must stay under SQS's 1 MiB after kombu's base64 (+1/3).
BATCH_MAX_BYTES = _int("BATCH_MAX_BYTES", 600_000)
FETCH_INTERVAL = _float("FETCH_INTERVAL", 2.0)
# How long one fetch task keeps filling batches before it returns its pool slot: 1.5 beat
# intervals, so two fetches overlap and receiving never pauses, while slots stay free
# for batch tasks (docs/performance.md).
FETCH_MAX_SECONDS = _float("FETCH_MAX_SECONDS", 1.5 * FETCH_INTERVAL)
# Concurrent ReceiveMessage calls inside one fetch ("several fetches in flight").
FETCH_RECEIVERS = _int("FETCH_RECEIVERS", 8)
# Long poll of the first receive; later receives of a fetch do not wait.
FETCH_WAIT_SECONDS = _int("FETCH_WAIT_SECONDS", 1)
# Seconds a received source message stays hidden while its batch is handed off.
SOURCE_VISIBILITY_TIMEOUT = _int("SOURCE_VISIBILITY_TIMEOUT", 60)

# --- Mask and insert --------------------------------------------------------------
BATCH_MAX_RETRIES = _int("BATCH_MAX_RETRIES", 8)
RETRY_BACKOFF_MAX = _int("RETRY_BACKOFF_MAX", 60)

# --- Masking -------------------------------------------------------------------
MASKING_MODE = _env("MASKING_MODE", "hmac")  # hmac (one-way) or siv (recoverable)
# Keys: MASKING_KEYS ("version:base64key,...") or a file of such lines.
MASKING_KEYS = _env("MASKING_KEYS", "")
MASKING_KEYS_FILE = _env("MASKING_KEYS_FILE", str(STACK_DIR / "masking.keys"))

# --- PostgreSQL ------------------------------------------------------------------
# Unset: the server the embedded stack started (its URL is kept in STACK_DIR).
DATABASE_URL = _env("DATABASE_URL", "")
DATABASE_URL_FILE = STACK_DIR / "database.url"

# Touched on every worker heartbeat; its age is the liveness probe (tasks/health.py).
WORKER_HEALTH_FILE = _env("WORKER_HEALTH_FILE", str(STACK_DIR / "worker.alive"))

# --- Flower ----------------------------------------------------------------------
FLOWER_ADDRESS = _env("FLOWER_ADDRESS", "127.0.0.1")
FLOWER_PORT = _int("FLOWER_PORT", 5555)
FLOWER_BASIC_AUTH = _env("FLOWER_BASIC_AUTH", "")  # user:password
# Flower is a read-only monitor; this opts in to its controls (task apply/revoke, worker
# shutdown, pool and consumers). It needs FLOWER_BASIC_AUTH (tasks/ops/flower.py).
FLOWER_ALLOW_CONTROL = _bool("FLOWER_ALLOW_CONTROL", False)
# The pipeline counters on Flower's /metrics read the ledger as a login user granted
# login_metrics (init.sql): SELECT on ingest_batches only. Unset: DATABASE_URL.
METRICS_DATABASE_URL = _env("METRICS_DATABASE_URL", "")


def database_url() -> str:
    """The PostgreSQL URL: DATABASE_URL, else the embedded stack's server."""
    if DATABASE_URL:
        return DATABASE_URL
    if DATABASE_URL_FILE.exists():
        return DATABASE_URL_FILE.read_text().strip()
    raise RuntimeError("DATABASE_URL is not set and the embedded stack is not up")


def metrics_database_url() -> str:
    """The PostgreSQL URL of the metrics collector: METRICS_DATABASE_URL, else database_url()."""
    return METRICS_DATABASE_URL or database_url()


def _broker_url() -> str:
    if not SQS_ENDPOINT_URL:
        return "sqs://"
    endpoint = urlsplit(SQS_ENDPOINT_URL)
    user = f"{quote(AWS_ACCESS_KEY_ID, safe='')}:{quote(AWS_SECRET_ACCESS_KEY, safe='')}"
    return f"sqs://{user}@{endpoint.netloc}"


# --- Celery ------------------------------------------------------------------------
CELERY_QUEUE_PREFIX = _env("CELERY_QUEUE_PREFIX", "login-pipeline-")
FETCH_QUEUE = "fetch"
BATCH_QUEUE = "batches"
# Longer than the longest batch (retries are new messages, so one attempt).
TASK_VISIBILITY_TIMEOUT = _int("TASK_VISIBILITY_TIMEOUT", 300)
# Receives of a batch task message before SQS moves it to the batch dead-letter queue
# (a task whose worker died again and again, or that failed outright).
BATCH_QUEUE_MAX_RECEIVES = _int("BATCH_QUEUE_MAX_RECEIVES", 5)

broker_url = _env("CELERY_BROKER_URL", _broker_url())
# Our transport: kombu's SQS transport plus what remote control and events need.
broker_transport = "tasks.broker.transport:Transport"
broker_transport_options = {
    "region": AWS_REGION,
    "queue_name_prefix": CELERY_QUEUE_PREFIX,
    "visibility_timeout": TASK_VISIBILITY_TIMEOUT,
    "wait_time_seconds": _int("BROKER_WAIT_SECONDS", 1),
    "polling_interval": _float("BROKER_POLLING_INTERVAL", 0.1),
    "supports_fanout": True,
}
broker_connection_retry_on_startup = True

task_queues = (
    Queue(FETCH_QUEUE, Exchange(FETCH_QUEUE, type="direct"), routing_key=FETCH_QUEUE),
    Queue(BATCH_QUEUE, Exchange(BATCH_QUEUE, type="direct"), routing_key=BATCH_QUEUE),
)
task_default_queue = BATCH_QUEUE
task_routes = {
    "tasks.fetch_batches": {"queue": FETCH_QUEUE},
    "tasks.mask_and_insert": {"queue": BATCH_QUEUE},
}
task_serializer = "json"
accept_content = ["json"]
task_ignore_result = True
result_backend = None

# Work is acknowledged only once done; a worker that dies mid-batch leaves its
# message for SQS to redeliver, and a failed task is left for the queue's
# redrive policy rather than deleted.
task_acks_late = True
task_reject_on_worker_lost = True
task_acks_on_failure = False
worker_prefetch_multiplier = _int("WORKER_PREFETCH_MULTIPLIER", 1)
# Chosen by measurement (docs/performance.md): two overlapping fetches and batch tasks.
worker_concurrency = _int("WORKER_CONCURRENCY", 4)
worker_max_memory_per_child = _int("WORKER_MAX_MEMORY_KB", 400_000)
worker_hijack_root_logger = False
# A batch is killed well before SQS would hand its message to another worker.
task_time_limit = int(TASK_VISIBILITY_TIMEOUT * 0.8)
task_soft_time_limit = int(TASK_VISIBILITY_TIMEOUT * 0.6)

# Task events feed Flower. Sent without persistent delivery to keep them cheap.
worker_send_task_events = _bool("WORKER_SEND_TASK_EVENTS", True)
task_send_sent_event = False
event_queue_expires = 60.0
event_queue_ttl = 10.0

beat_schedule = {
    "fetch-login-events": {
        "task": "tasks.fetch_batches",
        "schedule": FETCH_INTERVAL,
        # After an outage, stale fetches are dropped instead of piling up.
        "options": {"expires": max(FETCH_INTERVAL * 2, 5.0)},
    },
}
beat_schedule_filename = str(STACK_DIR / "celerybeat-schedule")
