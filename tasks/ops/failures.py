"""What went wrong, in one line an operator can act on, and the exit code it gives.

Every `python -m tasks` command ends in one of these codes (docs/commands.md, its exit code table):

    0  done
    1  the command's own negative answer (health: no recent heartbeat; run --drain: not drained in time)
    2  usage or configuration (a bad option, a bad setting, no masking key, a refused recovery)
    3  a service unreachable or refusing (PostgreSQL, SQS/SNS, the embedded stack not up), or a port taken
    4  a child process that failed (LocalStack, a worker, beat, Flower, a test session)
    5  an unforeseen error (a bug): named by its type and place; `--debug` shows the traceback

`describe` turns an exception into such a line. It never repeats a message that could
carry a value from the data (a SQL error's text, an AWS error's message): only the
service, the operation, the error's code and what to do.
"""

from __future__ import annotations

import errno
import subprocess
import traceback
from dataclasses import dataclass
from enum import IntEnum
from importlib.metadata import entry_points
from pathlib import Path
from urllib.parse import urlsplit

from tasks.ops.terminal import escaped


class Exit(IntEnum):
    OK = 0
    NEGATIVE = 1
    USAGE = 2
    UNREACHABLE = 3
    CHILD_FAILED = 4
    BUG = 5


# docs/commands.md's exit code table is made from these (dev/devkit/commands_doc.py).
MEANING = {
    Exit.OK: "done",
    Exit.NEGATIVE: "the command's own negative answer: `health` found no recent heartbeat, `dev run --drain`"
    " did not drain within `--timeout`",
    Exit.USAGE: "usage or configuration: a bad option or value, a bad setting, no masking key, a refused recovery,"
    " a development command where dev/ is not installed, an SQS/SNS endpoint whose TLS certificate does not"
    " verify (never retried)",
    Exit.UNREACHABLE: "a service unreachable or refusing (PostgreSQL, SQS/SNS, the embedded stack not up), or a"
    " port the command would bind already taken",
    Exit.CHILD_FAILED: "a child process failed: LocalStack did not start, a worker, beat or Flower exited during"
    " `dev run` (its last log lines are shown), a fault or conformance session failed",
    Exit.BUG: "an unforeseen error, named by its type and place; `--debug` or LOG_LEVEL=DEBUG shows the traceback",
}


# The entry point group through which another distribution adds command groups to
# `python -m tasks`: the development one (dev/pyproject.toml) adds `dev`.
COMMAND_PLUGINS = "login_pipeline.commands"


def has_dev_commands() -> bool:
    """Whether the development commands are installed (the image and a wheel lack them):
    only then may advice name a `python -m tasks dev` command."""
    return any(entry.name == "dev" for entry in entry_points(group=COMMAND_PLUGINS))


def start_sqs() -> str:
    """What to do about an SQS endpoint that does not answer, as fits this install."""
    if has_dev_commands():
        return "start it (`python -m tasks dev stack up`) or point SQS_ENDPOINT_URL at a running one"
    return "check that it runs and that SQS_ENDPOINT_URL (empty for AWS) names it"


def restart_sqs() -> str:
    """What to do about an SQS endpoint that accepts connections and never answers: the
    process on its port is hung, and starting another would find the port taken."""
    import celeryconfig as config

    if config.SQS_ENDPOINT_URL:
        return (
            "the process on its port is hung, and another cannot take the port; restart it"
            + (" (embedded stack: `python -m tasks dev stack down`, then `up`;" if has_dev_commands() else " (")
            + " compose: `docker compose restart localstack`)"
        )
    return "the endpoint is hung or overloaded; restart it, or check SQS_ENDPOINT_URL (empty for AWS) and AWS's status"


class Failure(Exception):
    """A failure the command layer prints as its one line, with its exit code."""

    def __init__(self, line: str, code: Exit) -> None:
        super().__init__(line)
        self.line, self.code = line, code


class PortTaken(Failure):
    def __init__(self, variable: str, port: int) -> None:
        super().__init__(
            f"port {port} ({variable}) is already taken: stop what listens there or set {variable} to a free port",
            Exit.UNREACHABLE,
        )


class ChildFailed(Failure):
    """A child process ended before its time; `line` names it, `tail` is its log's end."""

    def __init__(self, line: str, tail: str = "") -> None:
        super().__init__(line, Exit.CHILD_FAILED)
        self.tail = tail


class StackNotUp(Failure):
    def __init__(self) -> None:
        if has_dev_commands():
            line = (
                "PostgreSQL: DATABASE_URL is not set and the embedded stack is not up:"
                " run `python -m tasks dev stack up` or set DATABASE_URL"
            )
        else:
            line = "PostgreSQL: DATABASE_URL is not set: set it to the pipeline's database"
        super().__init__(line, Exit.UNREACHABLE)


@dataclass(frozen=True)
class Described:
    line: str
    code: Exit


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log (Celery's, Flower's or LocalStack's: no records in them)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _where(url: str) -> str:
    """host:port of a URL, without its user or password."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port}" if parts.port else (parts.hostname or url)


def _sqs_endpoint() -> str:
    import celeryconfig as config

    return _where(config.SQS_ENDPOINT_URL) if config.SQS_ENDPOINT_URL else "AWS"


def _postgres(exc: BaseException) -> Described:
    import psycopg2

    if isinstance(exc, psycopg2.OperationalError) and not getattr(exc, "pgcode", None):
        first = escaped((str(exc).strip().splitlines() or ["no answer"])[0])
        return Described(
            f"PostgreSQL unreachable ({first}): start it or point DATABASE_URL at a running server",
            Exit.UNREACHABLE,
        )
    code = getattr(exc, "pgcode", None) or "no code"
    hint = "; run `python -m tasks init`" if code in ("42P01", "42883") else ""  # no table / no function
    return Described(f"PostgreSQL refused a statement: {type(exc).__name__} ({code}){hint}", Exit.UNREACHABLE)


def _aws(exc: BaseException) -> Described:
    from botocore import exceptions as boto

    from tasks.broker import tls

    where = _sqs_endpoint()
    if isinstance(exc, boto.SSLError) and (refused := tls.refused(exc, _endpoint_of(exc))):
        return describe(refused)
    if isinstance(exc, boto.ClientError):
        error = exc.response.get("Error", {})
        code = escaped(error.get("Code", "error"))  # SQS's own text
        if "NonExistentQueue" in code or code == "QueueDoesNotExist":
            return Described(f"SQS at {where} has no such queue: run `python -m tasks init`", Exit.UNREACHABLE)
        return Described(f"SQS/SNS at {where} refused {exc.operation_name}: {code}", Exit.UNREACHABLE)
    if isinstance(exc, boto.NoCredentialsError | boto.PartialCredentialsError):
        return Described("AWS: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY", Exit.USAGE)
    if isinstance(exc, boto.NoRegionError):
        return Described("AWS: no region: set AWS_DEFAULT_REGION", Exit.USAGE)
    if isinstance(exc, boto.ReadTimeoutError):  # connected, no answer: a hung (or frozen) process holds the port
        return Described(
            f"SQS at {where} accepted the connection but did not answer: {restart_sqs()}", Exit.UNREACHABLE
        )
    if isinstance(exc, boto.ConnectTimeoutError):
        return Described(f"SQS at {where} did not answer in time: {start_sqs()}", Exit.UNREACHABLE)
    if isinstance(exc, boto.EndpointConnectionError | boto.ConnectionError):
        return Described(f"SQS unreachable at {where}: {start_sqs()}", Exit.UNREACHABLE)
    return Described(f"SQS/SNS at {where}: {type(exc).__name__}", Exit.UNREACHABLE)


def _endpoint_of(exc: BaseException) -> str:
    """The endpoint a botocore error names, else the configured one."""
    import celeryconfig as config

    named = getattr(exc, "kwargs", {}).get("endpoint_url")
    return str(named or config.SQS_ENDPOINT_URL or "https://sqs.amazonaws.com")


def _place(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    return f"{Path(last.filename).name}:{last.lineno} in {last.name}"


def describe(exc: BaseException) -> Described:
    """One line and an exit code for any exception a command can meet."""
    if isinstance(exc, Failure):
        return Described(exc.line, exc.code)
    if type(exc).__name__ == "CertificateRefused":  # tasks.broker.tls
        return Described(str(exc), Exit.USAGE)
    if type(exc).__name__ == "NoDatabase":  # celeryconfig.NoDatabase
        return describe(StackNotUp())
    if type(exc).__module__.startswith("psycopg2"):
        return _postgres(exc)
    if type(exc).__module__.startswith(("botocore", "boto3")):
        return _aws(exc)
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return Described(f"a port is already taken ({exc.strerror}): free it or choose another", Exit.UNREACHABLE)
    if isinstance(exc, subprocess.CalledProcessError):
        command = " ".join(Path(str(part)).name for part in list(exc.cmd)[:4])
        return Described(f"`{command} …` failed with status {exc.returncode}; see its output above", Exit.CHILD_FAILED)
    if isinstance(exc, ModuleNotFoundError):
        name = exc.name or "?"
        if name.startswith("devkit"):
            return Described("a development module (dev/devkit); this install does not carry it", Exit.USAGE)
        return Described(f"module {name} is not installed: pip install -r requirements-dev.txt", Exit.USAGE)
    return Described(
        f"unforeseen error: {type(exc).__name__} at {_place(exc)}; run with --debug for the traceback", Exit.BUG
    )
