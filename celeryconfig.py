"""Every setting of the login pipeline, read from the environment.

Upper-case names are the pipeline's own settings; lower-case names are Celery's.
Defaults fit the embedded stack (`python -m tasks dev stack up`): LocalStack on
localhost:4566 and the PostgreSQL server the stack started. Point the same
variables at real AWS and a managed PostgreSQL for production. Each variable is
declared once, here, with its default and what it does; README's configuration table
is made from these declarations (`settings_table`, `make docs`) and a test holds the
two equal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

from kombu import Exchange, Queue


@dataclass(frozen=True)
class Setting:
    name: str
    default: str  # as the README shows it
    doc: str


SETTINGS: dict[str, Setting] = {}


def _declare(name: str, default: object, doc: str, shown: str | None) -> str | None:
    if shown is None:
        shown = f"`{str(default).lower() if isinstance(default, bool) else default}`" if default != "" else "—"
    SETTINGS.setdefault(name, Setting(name, shown, doc))
    return os.environ.get(name)


def _env(name: str, default: str, doc: str, shown: str | None = None) -> str:
    value = _declare(name, default, doc, shown)
    return default if value is None else value


def _int(name: str, default: int, doc: str, shown: str | None = None) -> int:
    value = _declare(name, default, doc, shown)
    return default if value is None else int(value)


def _float(name: str, default: float, doc: str, shown: str | None = None) -> float:
    value = _declare(name, default, doc, shown)
    return default if value is None else float(value)


def _bool(name: str, default: bool, doc: str) -> bool:
    value = _declare(name, default, doc, None)
    return default if value is None else value.strip().lower() in ("1", "true", "yes", "on")


def settings_table() -> str:
    """README's configuration table, in the order the settings are declared."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    rows += [f"| `{s.name}` | {s.default} | {s.doc} |" for s in SETTINGS.values()]
    return "\n".join(rows)


# --- The embedded stack --------------------------------------------------------
STACK_DIR = Path(
    _env("STACK_DIR", str(Path(__file__).resolve().parent / ".stack"), "the embedded stack's folder", "`.stack`")
)
LOCALSTACK_PORT = _int("LOCALSTACK_PORT", 4566, "the embedded LocalStack's port (loopback only)")
LOCALSTACK_VENV = Path(
    _env(
        "LOCALSTACK_VENV",
        str(STACK_DIR / "localstack-venv"),
        "LocalStack's own virtual environment (its pins never touch the app's)",
        "`STACK_DIR/localstack-venv`",
    )
)

# --- AWS: SQS (source, dead letters, Celery's broker) ---------------------------
AWS_REGION = _env("AWS_DEFAULT_REGION", "us-east-1", "region")
SQS_ENDPOINT_URL = _env(
    "SQS_ENDPOINT_URL",
    f"http://localhost:{LOCALSTACK_PORT}",
    "SQS/SNS endpoint; empty for real AWS (boto3's own endpoint resolution and credential chain)",
    "`http://localhost:LOCALSTACK_PORT`",
)
_CREDENTIAL = "`test` with an endpoint, else the usual chain"
AWS_ACCESS_KEY_ID = _env("AWS_ACCESS_KEY_ID", "test" if SQS_ENDPOINT_URL else "", "credentials", _CREDENTIAL)
AWS_SECRET_ACCESS_KEY = _env("AWS_SECRET_ACCESS_KEY", "test" if SQS_ENDPOINT_URL else "", "credentials", _CREDENTIAL)
SOURCE_QUEUE = _env("SOURCE_QUEUE", "login-queue", "the source queue")
DEAD_LETTER_QUEUE = _env("DEAD_LETTER_QUEUE", "login-queue-dlq", "the record dead-letter queue")
SOURCE_MAX_RECEIVES = _int(
    "SOURCE_MAX_RECEIVES", 10, "receives before SQS itself moves a source message (never handed off) to the DLQ"
)
DEAD_LETTER_KEEP_BODY = _bool(
    "DEAD_LETTER_KEEP_BODY",
    True,
    "keep the original body in dead letters, so `redrive` can replay them; it holds raw PII (docs/privacy.md)",
)

# --- Fetch: source queue -> batches ---------------------------------------------
BATCH_SIZE = _int("BATCH_SIZE", 500, "messages per mask-and-insert task")
BATCH_MAX_BYTES = _int(
    "BATCH_MAX_BYTES",
    560_000,
    "bytes of a batch's messages as kombu's JSON carries them (kombu's two base64 layers make"
    " 16/9 of it; never above 585,216, so a task message fits SQS's 1 MiB)",
)
FETCH_INTERVAL = _float("FETCH_INTERVAL", 2.0, "seconds between scheduled fetches")
# 1.5 beat intervals: two fetches overlap and receiving never pauses, while pool slots
# stay free for batch tasks (docs/performance.md).
FETCH_MAX_SECONDS = _float(
    "FETCH_MAX_SECONDS",
    1.5 * FETCH_INTERVAL,
    "how long one fetch keeps filling batches before it returns its pool slot",
    "1.5 × `FETCH_INTERVAL`",
)
FETCH_RECEIVERS = _int("FETCH_RECEIVERS", 8, "`ReceiveMessage` calls in flight per fetch")
FETCH_WAIT_SECONDS = _int("FETCH_WAIT_SECONDS", 1, "long poll of a fetch's first receive (later ones do not wait)")
SOURCE_VISIBILITY_TIMEOUT = _int(
    "SOURCE_VISIBILITY_TIMEOUT", 60, "seconds a received source message stays hidden until its batch is handed off"
)

# --- Mask and insert --------------------------------------------------------------
BATCH_MAX_RETRIES = _int("BATCH_MAX_RETRIES", 8, "retries of a batch's transient failures")
RETRY_BACKOFF_MAX = _int("RETRY_BACKOFF_MAX", 60, "cap of one backoff step, seconds")

# --- Masking -------------------------------------------------------------------
MASKING_MODE = _env("MASKING_MODE", "hmac", "`hmac` (one-way) or `siv` (recoverable with the key)")
MASKING_KEYS = _env("MASKING_KEYS", "", "`version:base64key` entries, comma-separated; the newest version masks")
MASKING_KEYS_FILE = _env(
    "MASKING_KEYS_FILE", str(STACK_DIR / "masking.keys"), "a file of such lines (a secret)", "`STACK_DIR/masking.keys`"
)

# --- PostgreSQL ------------------------------------------------------------------
DATABASE_URL = _env("DATABASE_URL", "", "PostgreSQL; unset: the embedded stack's server", "the embedded stack's")
DATABASE_URL_FILE = STACK_DIR / "database.url"

WORKER_HEALTH_FILE = _env(
    "WORKER_HEALTH_FILE",
    str(STACK_DIR / "worker.alive"),
    "touched on every worker heartbeat; `python -m tasks health` checks its age (liveness)",
    "`STACK_DIR/worker.alive`",
)

# --- Flower ----------------------------------------------------------------------
FLOWER_ADDRESS = _env("FLOWER_ADDRESS", "127.0.0.1", "Flower's address; a non-local one requires basic auth")
FLOWER_PORT = _int("FLOWER_PORT", 5555, "Flower's port")
FLOWER_BASIC_AUTH = _env("FLOWER_BASIC_AUTH", "", "`user:password` for Flower, its API and `/metrics`")
FLOWER_ALLOW_CONTROL = _bool(
    "FLOWER_ALLOW_CONTROL",
    False,
    "opt in to Flower's controls (task apply/revoke, worker shutdown, pool); needs `FLOWER_BASIC_AUTH`",
)
METRICS_DATABASE_URL = _env(
    "METRICS_DATABASE_URL",
    "",
    "PostgreSQL for the counters on `/metrics`, as a login granted `login_metrics`",
    "`DATABASE_URL`",
)


class NoDatabase(RuntimeError):
    """No DATABASE_URL, and no embedded stack's server to fall back on."""


def database_url() -> str:
    """The PostgreSQL URL: DATABASE_URL, else the embedded stack's server."""
    if DATABASE_URL:
        return DATABASE_URL
    if DATABASE_URL_FILE.exists():
        return DATABASE_URL_FILE.read_text().strip()
    raise NoDatabase("DATABASE_URL is not set and the embedded stack is not up")


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
CELERY_QUEUE_PREFIX = _env("CELERY_QUEUE_PREFIX", "login-pipeline-", "prefix of Celery's SQS queues")
FETCH_QUEUE = "fetch"
BATCH_QUEUE = "batches"
TASK_VISIBILITY_TIMEOUT = _int(
    "TASK_VISIBILITY_TIMEOUT",
    90,
    "seconds a batch task stays hidden, longer than any batch (retries are new messages);"
    " the hard time limit is 0.8 of it, the soft 0.6",
)
BATCH_QUEUE_MAX_RECEIVES = _int(
    "BATCH_QUEUE_MAX_RECEIVES", 5, "receives of a batch task before SQS moves it to the batch dead-letter queue"
)

broker_url = _env("CELERY_BROKER_URL", _broker_url(), "override the broker URL (`sqs://…`)", "from the SQS settings")
BROKER_WAIT_SECONDS = _int("BROKER_WAIT_SECONDS", 1, "long poll of the worker's own SQS consumer")
# Our transport: kombu's SQS transport plus what remote control and events need.
broker_transport = "tasks.broker.transport:Transport"
broker_transport_options = {
    "region": AWS_REGION,
    "queue_name_prefix": CELERY_QUEUE_PREFIX,
    "visibility_timeout": TASK_VISIBILITY_TIMEOUT,
    "wait_time_seconds": BROKER_WAIT_SECONDS,
    "polling_interval": _float(
        "BROKER_POLLING_INTERVAL", 0.1, "pause of the worker's SQS consumer after an empty poll"
    ),
    "supports_fanout": True,
    # Bounded calls: botocore's defaults (60 s, several retries) could hold a warm
    # shutdown for minutes while SQS is unreachable.
    "client-config": {
        "connect_timeout": 3,
        "read_timeout": BROKER_WAIT_SECONDS + 10,
        "retries": {"mode": "standard", "max_attempts": 2},
    },
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
# A batch killed at the hard time limit is not acknowledged either: its source messages
# are already deleted, so its task message is the only copy (the redrive policy keeps it).
task_acks_on_timeout = False
# Celery's prefork pool, made to finish every warm shutdown (tasks/broker/pool.py).
worker_pool = "tasks.broker.pool:TaskPool"
worker_prefetch_multiplier = _int("WORKER_PREFETCH_MULTIPLIER", 1, "tasks a worker process reserves ahead")
# Chosen by measurement (docs/performance.md): two overlapping fetches and batch tasks.
worker_concurrency = _int("WORKER_CONCURRENCY", 4, "worker processes")
worker_max_memory_per_child = _int(
    "WORKER_MAX_MEMORY_KB", 400_000, "a pool process above this is replaced after its task"
)
worker_hijack_root_logger = False
# A batch is killed well before SQS would hand its message to another worker. Its SQL
# statements time out first (a lock, a slow disk), and the batch is retried. A warm
# shutdown therefore ends within task_time_limit + 10 s (82 s with the defaults), below
# the 90 s that compose and Kubernetes give a worker to stop.
task_time_limit = int(TASK_VISIBILITY_TIMEOUT * 0.8)
task_soft_time_limit = int(TASK_VISIBILITY_TIMEOUT * 0.6)
STATEMENT_TIMEOUT_MS = _int(
    "STATEMENT_TIMEOUT_MS",
    int(task_soft_time_limit * 750),
    "a batch's SQL statement is cancelled after this, and the batch retried",
    "0.75 × the soft time limit",
)

# Task events feed Flower. Sent without persistent delivery to keep them cheap.
worker_send_task_events = _bool("WORKER_SEND_TASK_EVENTS", True, "task events for Flower")
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

# --- Commands ----------------------------------------------------------------------
LOG_LEVEL = _env(
    "LOG_LEVEL", "INFO", "`DEBUG`: a failing `python -m tasks` command shows its traceback, as `--debug` does"
)
