"""Every setting of the login pipeline, read from the environment and checked.

`Settings` declares each environment variable once: its type, default, accepted range
and meaning. It is the source; this module exposes its values under the names the code
and Celery read (`config.BATCH_SIZE`, `config.database_url()`, and the lower-case names
of Celery's own settings, `app.config_from_object("celeryconfig")`). Upper-case names are
the pipeline's settings, lower-case names Celery's. Defaults fit the embedded stack
(`python -m tasks dev stack up`): LocalStack on localhost:4566 and the PostgreSQL server the
stack started; point the same variables at real AWS and a managed PostgreSQL for
production. The configuration table of docs/configuration.md is made from these declarations
(dev/devkit/docs.py, `make docs`) and a test holds the two equal; `python -m tasks
config` prints the values in effect (tasks/ops/settings_report.py).

A value outside its range stops every start that imports this module (a `python -m tasks`
command, `celery -A tasks worker|beat|flower`, Celery's even for `--help`) with one line
on stderr that names the variable and what it accepts, and exit status 2
(`ConfigurationError`).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

import annotated_types
import psycopg2
import psycopg2.extensions
from kombu import Exchange, Queue
from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

_HERE = Path(__file__).resolve().parent
EXIT_CONFIGURATION = 2
FETCH_SETTLE_SECONDS = 5  # a fetch's last deletes, after its last hand-off


def soft_time_limit(task_visibility_timeout: int) -> int:
    """Celery's soft time limit of a task, in seconds: 0.6 of its visibility timeout."""
    return int(task_visibility_timeout * 0.6)


def hard_time_limit(task_visibility_timeout: int) -> int:
    """Celery's hard time limit of a task, in seconds: 0.8 of its visibility timeout."""
    return int(task_visibility_timeout * 0.8)


# --- Types: what a variable accepts ------------------------------------------------------
TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _boolean(value: object) -> object:
    """Only the words of TRUE_WORDS and FALSE_WORDS, in any case: `ture` is an error, never false."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    raise ValueError("not a boolean word")


class Explained(ValueError):
    """A refusal whose words the configuration line shows: they never quote the value."""


def _http_url(value: str) -> str:
    """An http(s) URL with a host and no user or password (AWS credentials have settings
    of their own, and botocore sends none from a URL), or empty."""
    if value and (urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).hostname):
        raise ValueError("not an http(s) URL")
    if "@" in value:
        raise Explained(
            "a user or password in the URL: give credentials in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    return value


POSTGRES_SCHEMES = ("postgresql://", "postgres://")
LIBPQ_SECRETS = frozenset({"password", "sslpassword"})  # libpq's parameters that hold a secret


def libpq_reading(url: str) -> dict[str, str]:
    """The connection parameters libpq reads in a PostgreSQL URL: psycopg2's parse_dsn is
    libpq's own PQconninfoParse, the one parser every use of the URL goes through.

    Explained when libpq cannot read it (a bad percent-encoding), or reads it otherwise
    than the URL means: libpq ends the user and password at the first `@` (URL parsers at
    the last) and the whole authority at the first `/`, so an `@` or `/` of a password
    not percent-encoded leaves a host holding `@` or a port that is no number, and the
    password in an error message about that host or port."""
    try:
        reading = psycopg2.extensions.parse_dsn(url)
    except psycopg2.ProgrammingError:  # its message quotes the URL: never shown
        raise Explained("libpq cannot read it: percent-encode % @ / : in the user and password") from None
    hosts = [host for host in reading.get("host", "").split(",") if not host.startswith("/")]
    if any(set(host) & set("@/?# ") for host in hosts):
        raise Explained("libpq reads a host holding @: percent-encode @ in the user and password as %40")
    if not all(port.isdigit() for port in reading.get("port", "").split(",") if port):
        raise Explained("libpq reads a port that is no number: percent-encode / in the user and password as %2F")
    return reading


def _database_url(value: SecretStr) -> SecretStr:
    """A `postgresql://` URL that libpq reads as it means, or empty."""
    text = value.get_secret_value()
    if text:
        if not text.startswith(POSTGRES_SCHEMES):
            raise ValueError("not a postgresql:// URL")
        libpq_reading(text)
    return value


def hidden_userinfo(text: str) -> str:
    """Text with the user and password of any URL in it replaced by stars."""
    return re.sub(r"://.*@", "://***@", text, flags=re.DOTALL)


def _user_password(value: SecretStr) -> SecretStr:
    """Empty, or `user:password` entries separated by commas (as Flower splits them)."""
    text = value.get_secret_value()
    for entry in text.split(",") if text else []:
        user, colon, password = entry.partition(":")
        if not (user and colon and password):
            raise ValueError("not user:password")
    return value


Flag = Annotated[bool, BeforeValidator(_boolean)]
Port = Annotated[int, Field(ge=1, le=65535)]
QueueName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,80}$")]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
# libpq takes a socket folder in the query instead of a host (postgresql:///db?host=/run/postgresql).
DatabaseUrl = Annotated[SecretStr, AfterValidator(_database_url)]
UserPassword = Annotated[SecretStr, AfterValidator(_user_password)]


def _setting(default: Any, meaning: str, *, shown: str | None = None, accepts: str | None = None, **range_: Any) -> Any:
    """A setting's declaration: its default (a value, or a function of the settings declared
    before it), what docs/configuration.md shows as the default, what it accepts (else said from its type
    and range), and its meaning."""
    extra: Any = {"shown": shown, "accepts": accepts}
    if callable(default):
        return Field(default_factory=default, description=meaning, json_schema_extra=extra, **range_)
    return Field(default=default, description=meaning, json_schema_extra=extra, **range_)


def _before(data: dict[str, Any], name: str) -> Any:
    """A setting declared earlier, for a default computed from it (absent if it was invalid:
    pydantic then reports the earlier one and skips this default)."""
    return data[name]


_CREDENTIAL = "boto3's chain; `test` with an endpoint where it finds none"


class Settings(BaseSettings):
    """The pipeline's environment variables, in docs/configuration.md's order."""

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", frozen=True)

    # --- The embedded stack ------------------------------------------------------------
    STACK_DIR: Path = _setting(_HERE / ".stack", "the embedded stack's folder", shown="`.stack`", accepts="a folder")
    LOCALSTACK_PORT: Port = _setting(4566, "the embedded LocalStack's port (loopback only)")
    LOCALSTACK_VENV: Path = _setting(
        lambda data: _before(data, "STACK_DIR") / "localstack-venv",
        "LocalStack's own virtual environment (its pins never touch the app's)",
        shown="`STACK_DIR/localstack-venv`",
        accepts="a folder",
    )

    # --- AWS: SQS (source, dead letters, Celery's broker) -------------------------------
    AWS_DEFAULT_REGION: str = _setting("us-east-1", "region", accepts="an AWS region name", min_length=1)
    SQS_ENDPOINT_URL: HttpUrl = _setting(
        lambda data: f"http://localhost:{_before(data, 'LOCALSTACK_PORT')}",
        "SQS/SNS endpoint; empty for real AWS (boto3's own endpoint resolution and credential chain)",
        shown="`http://localhost:LOCALSTACK_PORT`",
        accepts="an http(s) URL (no user or password), or empty",
    )
    AWS_ACCESS_KEY_ID: str = _setting(
        "",
        "credentials; set, they win over the rest of boto3's chain, for every client"
        " (docs/configuration.md, Credentials)",
        shown=_CREDENTIAL,
        accepts="text",
    )
    AWS_SECRET_ACCESS_KEY: SecretStr = _setting(
        SecretStr(""), "credentials, with `AWS_ACCESS_KEY_ID`", shown=_CREDENTIAL, accepts="text (a secret)"
    )
    AWS_SESSION_TOKEN: SecretStr = _setting(
        SecretStr(""),
        "the session token of temporary credentials, with `AWS_ACCESS_KEY_ID`; carried by every client",
        shown="—",
        accepts="text (a secret)",
    )
    SOURCE_QUEUE: QueueName = _setting("login-queue", "the source queue", accepts="an SQS queue name")
    DEAD_LETTER_QUEUE: QueueName = _setting(
        "login-queue-dlq", "the record dead-letter queue", accepts="an SQS queue name"
    )
    SOURCE_MAX_RECEIVES: int = _setting(
        10, "receives before SQS itself moves a source message (never handed off) to the DLQ", ge=1, le=1000
    )
    DEAD_LETTER_KEEP_BODY: Flag = _setting(
        True,
        "keep the original body in dead letters, so `redrive` can replay them; it holds raw PII (docs/privacy.md)",
    )

    # --- Fetch: source queue -> batches -----------------------------------------------
    BATCH_SIZE: int = _setting(500, "messages per mask-and-insert task", ge=1, le=10_000)
    BATCH_MAX_BYTES: int = _setting(
        560_000,
        "bytes of a batch's messages as kombu's JSON carries them (kombu's two base64 layers make"
        " 16/9 of it; never above 585,216, so a task message fits SQS's 1 MiB)",
        ge=1024,
        le=585_216,
    )
    FETCH_INTERVAL: float = _setting(2.0, "seconds between scheduled fetches", gt=0, le=3600)
    # 1.5 beat intervals: two fetches overlap and receiving never pauses, while pool slots
    # stay free for batch tasks (docs/performance.md).
    FETCH_MAX_SECONDS: float = _setting(
        lambda data: 1.5 * _before(data, "FETCH_INTERVAL"),
        "how long one fetch keeps filling batches before it returns its pool slot",
        shown="1.5 × `FETCH_INTERVAL`",
        gt=0,
        le=3600,
    )
    FETCH_RECEIVERS: int = _setting(8, "`ReceiveMessage` calls in flight per fetch", ge=1, le=64)
    FETCHES_PER_TICK: int = _setting(
        1,
        "fetches beat starts every `FETCH_INTERVAL`; to scale out, one per worker replica (docs/performance.md)",
        ge=1,
        le=256,
    )
    FETCH_WAIT_SECONDS: int = _setting(
        1,
        "long poll of a fetch's receive while it holds no messages (then one call, not `FETCH_RECEIVERS`)",
        ge=0,
        le=20,
    )
    BATCH_MAX_WAIT_MS: int = _setting(
        250, "longest a received message waits for its batch to fill before the batch is handed off", ge=0, le=60_000
    )
    SQS_LEAN_CALLS: Flag = _setting(
        True,
        "the fetch's `ReceiveMessage` and `DeleteMessageBatch` as lean signed requests, not botocore's"
        " (tasks/broker/lean_sqs.py: about a quarter of the CPU per call)",
    )
    SOURCE_VISIBILITY_TIMEOUT: int = _setting(
        60,
        "seconds a received source message stays hidden until its batch is handed off",
        accepts="an integer from 1 to 43,200, above `FETCH_MAX_SECONDS` + `FETCH_WAIT_SECONDS`"
        f" + {FETCH_SETTLE_SECONDS}",
        ge=1,
        le=43_200,
    )

    # --- Mask and insert ----------------------------------------------------------------
    # 20 steps capped at RETRY_BACKOFF_MAX (15 s) span at least 134 s, as 8 capped at 60 s spanned 121 s.
    BATCH_MAX_RETRIES: int = _setting(20, "retries of a batch's transient failures", ge=0, le=100)
    RETRY_BACKOFF_MAX: int = _setting(
        15,
        "cap of one backoff step, seconds",
        accepts="an integer from 1 to 3,600 that, with the hard time limit, fits in `TASK_VISIBILITY_TIMEOUT`"
        " (at most 0.2 of it)",
        ge=1,
        le=3600,
    )

    # --- Masking ------------------------------------------------------------------------
    MASKING_MODE: Literal["hmac", "siv"] = _setting("hmac", "`hmac` (one-way) or `siv` (recoverable with the key)")
    MASKING_KEYS: SecretStr = _setting(
        SecretStr(""),
        "`version:base64key` entries, comma-separated; the newest version masks",
        shown="—",
        accepts="`version:base64key,…` (a secret)",
    )
    MASKING_KEYS_FILE: Path = _setting(
        lambda data: _before(data, "STACK_DIR") / "masking.keys",
        "a file of such lines (a secret)",
        shown="`STACK_DIR/masking.keys`",
        accepts="a file",
    )

    # --- Retention -----------------------------------------------------------------------
    RETENTION_DAYS: int = _setting(
        0,
        "days a row of user_logins is kept, by its create_date; 0: kept forever (docs/privacy.md)",
        ge=0,
        le=36_500,
    )
    RETENTION_INTERVAL: float = _setting(
        600.0, "seconds between beat-scheduled retention runs (when `RETENTION_DAYS` is set)", gt=0, le=86_400
    )
    RETENTION_BATCH_ROWS: int = _setting(
        1000, "rows a retention run deletes per transaction (each a short one)", ge=1, le=100_000
    )

    # --- PostgreSQL ----------------------------------------------------------------------
    DATABASE_URL: DatabaseUrl = _setting(
        SecretStr(""),
        "PostgreSQL; unset: the embedded stack's server",
        shown="the embedded stack's",
        accepts="a `postgresql://` URL (its password a secret), or empty",
    )
    WORKER_HEALTH_FILE: Path = _setting(
        lambda data: _before(data, "STACK_DIR") / "worker.alive",
        "touched on every worker heartbeat; `python -m tasks health` checks its age (liveness)",
        shown="`STACK_DIR/worker.alive`",
        accepts="a file",
    )
    BEAT_HEALTH_FILE: Path = _setting(
        lambda data: _before(data, "STACK_DIR") / "beat.alive",
        "touched on every tick of beat's scheduler; `python -m tasks health --beat` checks its age (liveness)",
        shown="`STACK_DIR/beat.alive`",
        accepts="a file",
    )
    LOG_FORMAT: Literal["text", "json"] = _setting(
        "text", "`text` (Celery's lines) or `json` (one object a line, for worker, beat, Flower and `metrics`)"
    )
    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = _setting(
        "INFO", "`DEBUG`: a failing `python -m tasks` command shows its traceback, as `--debug` does"
    )

    # --- Flower ----------------------------------------------------------------------------
    FLOWER_ADDRESS: str = _setting(
        "127.0.0.1", "Flower's address; a non-local one requires basic auth", accepts="an address", min_length=1
    )
    FLOWER_PORT: Port = _setting(5555, "Flower's port")
    FLOWER_BASIC_AUTH: UserPassword = _setting(
        SecretStr(""),
        "`user:password` (comma-separated for several) for Flower, its API and `/metrics`;"
        " beyond the loopback a password needs 12 or more characters",
        shown="—",
        accepts="`user:password` entries (a secret), or empty",
    )
    FLOWER_ALLOW_CONTROL: Flag = _setting(
        False,
        "opt in to Flower's controls (task apply/revoke, worker shutdown, pool); needs `FLOWER_BASIC_AUTH`",
    )
    METRICS_DATABASE_URL: DatabaseUrl = _setting(
        SecretStr(""),
        "PostgreSQL for the counters on `/metrics`, as a login granted `login_metrics`",
        shown="`DATABASE_URL`",
        accepts="a `postgresql://` URL (its password a secret), or empty",
    )
    METRICS_ADDRESS: str = _setting(
        "127.0.0.1",
        "`python -m tasks metrics`'s address; a non-local one requires basic auth",
        accepts="an address",
        min_length=1,
    )
    METRICS_PORT: Port = _setting(9808, "`python -m tasks metrics`'s port")
    METRICS_BASIC_AUTH: UserPassword = _setting(
        SecretStr(""),
        "`user:password` (comma-separated for several) for `python -m tasks metrics`;"
        " beyond the loopback a password needs 12 or more characters",
        shown="`FLOWER_BASIC_AUTH`",
        accepts="`user:password` entries (a secret), or empty",
    )
    METRICS_IDLE_SECONDS: float = _setting(
        10.0,
        "`python -m tasks metrics` closes a connection idle, or still sending its request, this long",
        gt=0,
        le=3600,
    )

    # --- Celery ----------------------------------------------------------------------------
    CELERY_QUEUE_PREFIX: str = _setting(
        "login-pipeline-",
        "prefix of Celery's SQS queues",
        accepts="up to 40 letters, digits, `-` or `_`",
        pattern=r"^[A-Za-z0-9_-]{0,40}$",
    )
    TASK_VISIBILITY_TIMEOUT: int = _setting(
        90,
        "seconds a batch task stays hidden, longer than any batch (retries are new messages);"
        " the hard time limit is 0.8 of it, the soft 0.6",
        accepts=f"an integer from 10 to 43,200 whose 0.6 leaves a fetch {FETCH_SETTLE_SECONDS} s beyond"
        " `FETCH_MAX_SECONDS` + `FETCH_WAIT_SECONDS`, and whose 0.2 holds `RETRY_BACKOFF_MAX`",
        ge=10,
        le=43_200,
    )
    BATCH_QUEUE_MAX_RECEIVES: int = _setting(
        5, "receives of a batch task before SQS moves it to the batch dead-letter queue", ge=1, le=1000
    )
    CELERY_BROKER_URL: SecretStr = _setting(
        lambda data: SecretStr(_sqs_broker_url(data)),
        "override the broker URL (`sqs://…`)",
        shown="from the SQS settings",
        accepts="a broker URL (its credentials a secret)",
        min_length=1,
    )
    BROKER_WAIT_SECONDS: int = _setting(1, "long poll of the worker's own SQS consumer", ge=0, le=20)
    BROKER_POLLING_INTERVAL: float = _setting(
        0.1, "pause of the worker's SQS consumer after an empty poll", ge=0, le=60
    )
    WORKER_PREFETCH_MULTIPLIER: int = _setting(1, "tasks a worker process reserves ahead", ge=1, le=100)
    # Chosen by measurement (docs/performance.md): two overlapping fetches and batch tasks.
    WORKER_CONCURRENCY: int = _setting(4, "worker processes", ge=1, le=256)
    WORKER_MAX_MEMORY_KB: int = _setting(400_000, "a pool process above this is replaced after its task", ge=50_000)
    # A quarter of what a pool process may reach: a fetch's bodies, with Python's own copies
    # of a response while it is read, stay below it (docs/performance.md, "Large messages").
    FETCH_MAX_BYTES: int = _setting(
        lambda data: _before(data, "WORKER_MAX_MEMORY_KB") * 1024 // 4,
        "bytes of received messages one fetch holds at once, each message asked for and not yet"
        " received counted at SQS's 1 MiB (tasks/pipeline/batching.py)",
        shown="a quarter of `WORKER_MAX_MEMORY_KB`",
        ge=2 * 1_048_576,
    )
    STATEMENT_TIMEOUT_MS: int = _setting(
        lambda data: soft_time_limit(_before(data, "TASK_VISIBILITY_TIMEOUT")) * 750,
        "a batch's SQL statement is cancelled after this, and the batch retried",
        shown="0.75 × the soft time limit",
        ge=1,
    )
    WORKER_SEND_TASK_EVENTS: Flag = _setting(True, "task events for Flower")
    TASK_EVENTS_GROUP_MS: int = _setting(
        500,
        "longest a task event waits to be published with others as one message (0: each at once)",
        ge=0,
        le=10_000,
    )

    @model_validator(mode="after")
    def _no_message_outlives_its_visibility(self) -> Settings:
        """Every message a process holds must be done with before SQS would hand it to
        another, else it is delivered (and worked) twice. A fetch receives until
        FETCH_MAX_SECONDS, plus its last long poll, hands off what it holds by then at the
        latest (BATCH_MAX_WAIT_MS hands most batches off sooner, never later) and settles
        its deletes within FETCH_SETTLE_SECONDS: its source messages must stay hidden that
        long, and the fetch task must end within its soft time limit. A retried batch is a
        new message that the worker holds until its countdown (up to RETRY_BACKOFF_MAX) and
        then runs up to the hard time limit: both within TASK_VISIBILITY_TIMEOUT."""
        problem = next((line for line in self._outlived() if line), None)
        if problem:
            raise ValueError(problem)
        return self

    def _outlived(self) -> Iterator[str | None]:
        """One line for each pair of time settings that lets a message outlive its visibility."""
        span = self.FETCH_MAX_SECONDS + self.FETCH_WAIT_SECONDS
        held = span + FETCH_SETTLE_SECONDS
        soft_limit = soft_time_limit(self.TASK_VISIBILITY_TIMEOUT)
        hard_limit = hard_time_limit(self.TASK_VISIBILITY_TIMEOUT)
        yield (
            f"SOURCE_VISIBILITY_TIMEOUT={self.SOURCE_VISIBILITY_TIMEOUT} must be above FETCH_MAX_SECONDS"
            f" + FETCH_WAIT_SECONDS + {FETCH_SETTLE_SECONDS} s ({held:g} s): a fetch holds its messages that long"
            " before their deletes settle; raise it or shorten the fetch"
            if held >= self.SOURCE_VISIBILITY_TIMEOUT
            else None
        )
        yield (
            f"TASK_VISIBILITY_TIMEOUT={self.TASK_VISIBILITY_TIMEOUT} gives tasks a soft time limit"
            f" of {soft_limit} s, which must leave a fetch FETCH_MAX_SECONDS + FETCH_WAIT_SECONDS ({span:g} s) and"
            f" {FETCH_SETTLE_SECONDS} s to settle its deletes: raise it or shorten the fetch"
            if held > soft_limit
            else None
        )
        yield (
            f"RETRY_BACKOFF_MAX={self.RETRY_BACKOFF_MAX} with TASK_VISIBILITY_TIMEOUT={self.TASK_VISIBILITY_TIMEOUT}:"
            f" a retried batch is held up to {self.RETRY_BACKOFF_MAX} s before it runs and then up to its hard time"
            f" limit ({hard_limit} s), beyond its {self.TASK_VISIBILITY_TIMEOUT} s of visibility, and SQS would"
            f" deliver it again: lower RETRY_BACKOFF_MAX to {self.TASK_VISIBILITY_TIMEOUT - hard_limit}"
            " or raise TASK_VISIBILITY_TIMEOUT"
            if self.RETRY_BACKOFF_MAX + hard_limit > self.TASK_VISIBILITY_TIMEOUT
            else None
        )


def _sqs_broker_url(data: dict[str, Any]) -> str:
    """`sqs://` with the endpoint's host and port, and no credentials: the transport takes
    them by the pipeline's one rule (tasks/broker/aws.py), session token and rotation
    included, which keys in the URL would override."""
    endpoint = _before(data, "SQS_ENDPOINT_URL")
    if not endpoint:
        return "sqs://"
    parts = urlsplit(endpoint)
    return f"sqs://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


# --- What a setting accepts, and the one line a bad value gets ----------------------------


def accepts(name: str) -> str:
    """What the variable accepts, in words: declared, or said from its type and range."""
    field = Settings.model_fields[name]
    declared = (field.json_schema_extra or {}).get("accepts")  # type: ignore[union-attr]
    if isinstance(declared, str):
        return declared
    if field.annotation is bool:
        return f"{'/'.join(TRUE_WORDS)} or {'/'.join(FALSE_WORDS)}"
    if get_origin(field.annotation) is Literal:
        words = [f"`{word}`" for word in get_args(field.annotation)]
        return ", ".join(words[:-1]) + f" or {words[-1]}"
    kind = "an integer" if field.annotation is int else "a number"
    return f"{kind} {_range(field)}".strip()


def _range(field: FieldInfo) -> str:
    bounds = {
        bound: getattr(item, bound)
        for item in field.metadata
        for bound in ("ge", "gt", "le")
        if isinstance(item, getattr(annotated_types, bound.capitalize()))
    }
    low = f"from {bounds['ge']:,}" if "ge" in bounds else f"above {bounds['gt']:,}" if "gt" in bounds else ""
    if "le" not in bounds:
        return low.replace("from", "of at least")
    return f"{low} to {bounds['le']:,}" if "ge" in bounds else f"{low}, at most {bounds['le']:,}"


def is_secret(name: str) -> bool:
    return Settings.model_fields[name].annotation is SecretStr


class ConfigurationError(SystemExit):
    """A setting the pipeline cannot start with. A SystemExit with status 2: whichever
    program imported this module (ours, Celery's, Flower's) stops with the one line that
    `_load()` printed, and no traceback."""

    def __init__(self, line: str) -> None:
        super().__init__(EXIT_CONFIGURATION)
        self.line = line


def problem_line(error: ValidationError) -> str:
    """One line for every variable that failed: its name, its value (unless a secret) and
    what it accepts."""
    problems = []
    for item in error.errors():
        if not item["loc"]:  # settings that are valid alone and not together
            problems.append(item["msg"].removeprefix("Value error, "))
            continue
        if item["type"] == "default_factory_not_called":
            continue  # a default computed from a setting that failed: that one is named
        name = str(item["loc"][0])
        value = "" if is_secret(name) else f"={hidden_userinfo(str(item['input']))[:60]!r}"
        cause = item.get("ctx", {}).get("error")
        why = f" ({cause})" if isinstance(cause, Explained) else ""
        problems.append(f"{name}{value} is not valid{why}: it accepts {accepts(name).replace('`', '')}")
    return "configuration: " + "; ".join(problems or [str(error).splitlines()[0]])


def _load() -> Settings:
    """The settings in effect, read from the environment; a bad value prints one line and
    exits 2 (ConfigurationError)."""
    try:
        return Settings()
    except ValidationError as error:
        line = problem_line(error)
        print(line, file=sys.stderr)
        raise ConfigurationError(line) from None


_settings = _load()

# --- The values in effect, under the names the code reads ------------------------------
STACK_DIR = _settings.STACK_DIR
LOCALSTACK_PORT = _settings.LOCALSTACK_PORT
LOCALSTACK_VENV = _settings.LOCALSTACK_VENV

AWS_REGION = _settings.AWS_DEFAULT_REGION
SQS_ENDPOINT_URL = _settings.SQS_ENDPOINT_URL
AWS_ACCESS_KEY_ID = _settings.AWS_ACCESS_KEY_ID
AWS_SECRET_ACCESS_KEY = _settings.AWS_SECRET_ACCESS_KEY.get_secret_value()
SOURCE_QUEUE = _settings.SOURCE_QUEUE
DEAD_LETTER_QUEUE = _settings.DEAD_LETTER_QUEUE
SOURCE_MAX_RECEIVES = _settings.SOURCE_MAX_RECEIVES
DEAD_LETTER_KEEP_BODY = _settings.DEAD_LETTER_KEEP_BODY

BATCH_SIZE = _settings.BATCH_SIZE
BATCH_MAX_BYTES = _settings.BATCH_MAX_BYTES
FETCH_INTERVAL = _settings.FETCH_INTERVAL
FETCH_MAX_SECONDS = _settings.FETCH_MAX_SECONDS
FETCH_RECEIVERS = _settings.FETCH_RECEIVERS
FETCHES_PER_TICK = _settings.FETCHES_PER_TICK
FETCH_WAIT_SECONDS = _settings.FETCH_WAIT_SECONDS
BATCH_MAX_WAIT_MS = _settings.BATCH_MAX_WAIT_MS
SQS_LEAN_CALLS = _settings.SQS_LEAN_CALLS
SOURCE_VISIBILITY_TIMEOUT = _settings.SOURCE_VISIBILITY_TIMEOUT
FETCH_MAX_BYTES = _settings.FETCH_MAX_BYTES

BATCH_MAX_RETRIES = _settings.BATCH_MAX_RETRIES
RETRY_BACKOFF_MAX = _settings.RETRY_BACKOFF_MAX

MASKING_MODE = _settings.MASKING_MODE
MASKING_KEYS = _settings.MASKING_KEYS.get_secret_value()
MASKING_KEYS_FILE = str(_settings.MASKING_KEYS_FILE)

RETENTION_DAYS = _settings.RETENTION_DAYS
RETENTION_INTERVAL = _settings.RETENTION_INTERVAL
RETENTION_BATCH_ROWS = _settings.RETENTION_BATCH_ROWS

DATABASE_URL = _settings.DATABASE_URL.get_secret_value()
DATABASE_URL_FILE = STACK_DIR / "database.url"
WORKER_HEALTH_FILE = str(_settings.WORKER_HEALTH_FILE)
BEAT_HEALTH_FILE = str(_settings.BEAT_HEALTH_FILE)
LOG_FORMAT = _settings.LOG_FORMAT
LOG_LEVEL = _settings.LOG_LEVEL

FLOWER_ADDRESS = _settings.FLOWER_ADDRESS
FLOWER_PORT = _settings.FLOWER_PORT
FLOWER_BASIC_AUTH = _settings.FLOWER_BASIC_AUTH.get_secret_value()
FLOWER_ALLOW_CONTROL = _settings.FLOWER_ALLOW_CONTROL
METRICS_DATABASE_URL = _settings.METRICS_DATABASE_URL.get_secret_value()
METRICS_ADDRESS = _settings.METRICS_ADDRESS
METRICS_PORT = _settings.METRICS_PORT
METRICS_BASIC_AUTH = _settings.METRICS_BASIC_AUTH.get_secret_value()
METRICS_IDLE_SECONDS = _settings.METRICS_IDLE_SECONDS


def in_effect() -> Settings:
    """The checked settings this process runs with (`python -m tasks config` prints them)."""
    return _settings


class NoDatabase(RuntimeError):
    """No DATABASE_URL, and no embedded stack's server to fall back on."""


def database_url() -> str:
    """The PostgreSQL URL: DATABASE_URL, else the embedded stack's server."""
    if DATABASE_URL:
        return DATABASE_URL
    if DATABASE_URL_FILE.exists():
        return DATABASE_URL_FILE.read_text().strip()
    raise NoDatabase("DATABASE_URL is not set and the embedded stack is not up")


def metrics_basic_auth() -> list[str]:
    """The metrics server's `user:password` entries: METRICS_BASIC_AUTH's, else Flower's."""
    text = METRICS_BASIC_AUTH or FLOWER_BASIC_AUTH
    return text.split(",") if text else []


def metrics_database_url() -> str:
    """The PostgreSQL URL of the metrics collector: METRICS_DATABASE_URL, else database_url()."""
    return METRICS_DATABASE_URL or database_url()


# --- Celery ------------------------------------------------------------------------
CELERY_QUEUE_PREFIX = _settings.CELERY_QUEUE_PREFIX
FETCH_QUEUE = "fetch"
BATCH_QUEUE = "batches"
TASK_VISIBILITY_TIMEOUT = _settings.TASK_VISIBILITY_TIMEOUT
BATCH_QUEUE_MAX_RECEIVES = _settings.BATCH_QUEUE_MAX_RECEIVES

broker_url = _settings.CELERY_BROKER_URL.get_secret_value()
BROKER_WAIT_SECONDS = _settings.BROKER_WAIT_SECONDS
# Our transport: kombu's SQS transport plus what remote control and events need.
broker_transport = "tasks.broker.transport:Transport"
broker_transport_options = {
    "region": AWS_REGION,
    "queue_name_prefix": CELERY_QUEUE_PREFIX,
    "visibility_timeout": TASK_VISIBILITY_TIMEOUT,
    "wait_time_seconds": BROKER_WAIT_SECONDS,
    "polling_interval": _settings.BROKER_POLLING_INTERVAL,
    "supports_fanout": True,
    # kombu builds the endpoint from the broker URL's host: https when the endpoint is.
    **({"is_secure": True} if SQS_ENDPOINT_URL.startswith("https://") else {}),
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
worker_prefetch_multiplier = _settings.WORKER_PREFETCH_MULTIPLIER
worker_concurrency = _settings.WORKER_CONCURRENCY
worker_max_memory_per_child = _settings.WORKER_MAX_MEMORY_KB
worker_hijack_root_logger = False
# A batch is killed well before SQS would hand its message to another worker. Its SQL
# statements time out first (a lock, a slow disk), and the batch is retried. A warm
# shutdown therefore ends within task_time_limit + 10 s (82 s with the defaults), below
# the 90 s that compose and Kubernetes give a worker to stop.
task_time_limit = hard_time_limit(TASK_VISIBILITY_TIMEOUT)
task_soft_time_limit = soft_time_limit(TASK_VISIBILITY_TIMEOUT)
STATEMENT_TIMEOUT_MS = _settings.STATEMENT_TIMEOUT_MS

# Task events feed Flower. Sent without persistent delivery to keep them cheap, and in
# groups of up to TASK_EVENTS_GROUP_MS (tasks/broker/consumer.py).
worker_send_task_events = _settings.WORKER_SEND_TASK_EVENTS
TASK_EVENTS_GROUP_MS = _settings.TASK_EVENTS_GROUP_MS
worker_consumer = "tasks.broker.consumer:Consumer"
task_send_sent_event = False
event_queue_expires = 60.0
event_queue_ttl = 10.0

# Settings whose values are secrets (names as this module spells them). tasks/ops/censor.py
# adds them to Celery's own filter, so `celery inspect conf`, Flower's worker Config tab
# and Celery's bug report show "********" for them; broker_url holds the AWS credentials.
SECRET_SETTINGS = (
    *(name for name in Settings.model_fields if is_secret(name)),
    "AWS_ACCESS_KEY_ID",
    "broker_url",
)

# One entry a fetch started each tick: every fetch receives until its time is up, so
# about 1.5 times FETCHES_PER_TICK run at once across all workers, whatever their number.
beat_schedule = {
    "fetch-login-events" + (f"-{n + 1}" if n else ""): {
        "task": "tasks.fetch_batches",
        "schedule": FETCH_INTERVAL,
        # After an outage, stale fetches are dropped instead of piling up.
        "options": {"expires": max(FETCH_INTERVAL * 2, 5.0)},
    }
    for n in range(FETCHES_PER_TICK)
}
# Rows past RETENTION_DAYS are deleted in short batches (tasks/retention.py).
if RETENTION_DAYS:
    beat_schedule["expire-old-logins"] = {
        "task": "tasks.expire_old_logins",
        "schedule": RETENTION_INTERVAL,
        "options": {"expires": RETENTION_INTERVAL},
    }
beat_schedule_filename = str(STACK_DIR / "celerybeat-schedule")
# Celery's persistent scheduler, touching BEAT_HEALTH_FILE on every tick (tasks/ops/health.py).
beat_scheduler = "tasks.ops.health:HeartbeatScheduler"
