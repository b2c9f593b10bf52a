"""The embedded stack: LocalStack and PostgreSQL as host processes, no Docker, no sudo.

`up` starts LocalStack (from its own virtual environment in STACK_DIR) unless one
already answers on LOCALSTACK_PORT, and PostgreSQL: the server named by DATABASE_URL
if set, else a private server from the ``pgserver`` package in STACK_DIR/pgdata. Then
it creates the queues, applies init.sql and makes a development masking key if no key
is configured. `down` stops what `up` started. (`python -m tasks init` does only the
queues and the schema, against whatever the configuration points at.)

A start is checked: LocalStack's port must be free (or held by a LocalStack that answers)
before anything starts, and a failed start stops what it started, so that no process is
left behind. The embedded PostgreSQL listens on a Unix socket in its folder, no TCP port.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.request
import warnings
from pathlib import Path
from types import ModuleType

import psutil

import celeryconfig as config
from devkit import children, localstack_venv
from devkit.children import say
from tasks.ops import provision
from tasks.ops.failures import ChildFailed, PortTaken, tail
from tasks.pipeline.keys import create_development_key

ROOT = Path(__file__).resolve().parents[2]
LOCALSTACK_STOP_SECONDS = 10.0  # from SIGTERM to SIGKILL
POSTGRES_STOP_SECONDS = 10.0  # of a fast shutdown, before an immediate one


def _paths() -> dict[str, Path]:
    d = config.STACK_DIR
    return {
        "venv": config.LOCALSTACK_VENV,
        "pid": d / "localstack.pid",
        "log": d / "localstack.log",
        "fs": d / "localstack-fs",
        "pgdata": d / "pgdata",
    }


# --- LocalStack ------------------------------------------------------------------
def localstack_ready() -> bool:
    url = f"http://127.0.0.1:{config.LOCALSTACK_PORT}/_localstack/health"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            services = json.load(response).get("services", {})
    except (OSError, ValueError):
        return False
    return all(services.get(s) in ("available", "running") for s in ("sqs", "sns"))


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether this machine could listen on `port` now (nothing listens or is bound there)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def require_free(variable: str, port: int, host: str = "127.0.0.1") -> None:
    if not port_free(port, host):
        raise PortTaken(variable, port)


def check_ports() -> None:
    """The ports `up` would bind: LocalStack's, unless a LocalStack already answers there."""
    if not localstack_ready():
        require_free("LOCALSTACK_PORT", config.LOCALSTACK_PORT)


def start_localstack(timeout: float = 120) -> bool:
    """Start LocalStack unless one answers already; True if this call started it."""
    if localstack_ready():
        say(f"LocalStack already answers on port {config.LOCALSTACK_PORT}")
        return False
    require_free("LOCALSTACK_PORT", config.LOCALSTACK_PORT)
    paths = _paths()
    python = localstack_venv.ensure(paths["venv"])
    env = {
        **os.environ,
        "GATEWAY_LISTEN": f"127.0.0.1:{config.LOCALSTACK_PORT}",
        # Its default server binds every interface whatever GATEWAY_LISTEN says;
        # hypercorn honours the host, so the stack is reachable from this machine only.
        "GATEWAY_SERVER": "hypercorn",
        "SERVICES": "sqs,sns",
        "DNS_ADDRESS": "0",
        "FILESYSTEM_ROOT": str(paths["fs"]),
        "SKIP_SSL_CERT_DOWNLOAD": "1",
        "DISABLE_EVENTS": "1",
    }
    with open(paths["log"], "ab") as log:
        process = subprocess.Popen(
            [str(python), "-m", "localstack.runtime.main"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    paths["pid"].write_text(str(process.pid))
    deadline = time.monotonic() + timeout
    while not localstack_ready():
        if process.poll() is not None or time.monotonic() > deadline:
            ended = "exited" if process.poll() is not None else f"did not answer within {timeout:.0f} s"
            _stop_pid(paths["pid"], "LocalStack")
            raise ChildFailed(
                f"LocalStack {ended} on port {config.LOCALSTACK_PORT}; see {paths['log']}", tail(paths["log"])
            )
        time.sleep(0.25)
    say(f"LocalStack up on port {config.LOCALSTACK_PORT} (log: {paths['log']})")
    return True


def log_path() -> Path:
    """LocalStack's log, where it logs each call it serves."""
    return _paths()["log"]


def localstack_process() -> psutil.Process | None:
    """The LocalStack process answering on LOCALSTACK_PORT, for the benches' CPU figures:
    the one this stack started, else a LocalStack process listening there (not a proxy
    in front of one, not a process that took over a stale pid); None if there is none."""
    candidates: list[int] = []
    pid_file = _paths()["pid"]
    with contextlib.suppress(ValueError, OSError):
        candidates.append(int(pid_file.read_text()))
    with contextlib.suppress(psutil.Error, OSError):
        listening = psutil.net_connections(kind="tcp")
        candidates += [
            c.pid
            for c in listening
            if c.status == psutil.CONN_LISTEN and c.laddr.port == config.LOCALSTACK_PORT and c.pid
        ]
    for pid in candidates:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            if "localstack" in " ".join(process.cmdline()):
                return process
    return None


def _stop_pid(pid_file: Path, name: str) -> None:
    """Stop the LocalStack that `up` started (its pid leads its own process group): SIGTERM,
    SIGKILL past LOCALSTACK_STOP_SECONDS, then anything still in its group. A pid file
    whose process is no LocalStack (a stale file, its pid since reused) is only removed:
    that process, and its group, are someone else's."""
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    pid_file.unlink(missing_ok=True)
    try:
        if "localstack" not in " ".join(psutil.Process(pid).cmdline()):
            say(f"{pid_file} named process {pid}, which is no LocalStack: left it running")
            return
        children.stop({name: pid}, lambda _: LOCALSTACK_STOP_SECONDS, children.SIGNALS.hurry)
    except psutil.AccessDenied:  # another user's: not ours either
        say(f"{pid_file} named process {pid}, another user's: left it running")
        return
    except psutil.NoSuchProcess:
        pass  # its group may outlive it, and no new process takes its pid while it does
    left = children.kill_left(children.in_group(pid), f"{name}'s process group")
    if left:
        raise ChildFailed(f"{name}'s processes still running after SIGKILL: {left}; see `ps -p` for them")
    say(f"{name} stopped")


# --- PostgreSQL ----------------------------------------------------------------------
def _pgserver() -> ModuleType:
    """pgserver, imported only by the embedded stack, without platformdirs' harmless
    warning about an unset XDG_RUNTIME_DIR."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pgserver
    return pgserver


def start_postgres() -> str:
    if config.DATABASE_URL:
        say("PostgreSQL: using DATABASE_URL")
        return config.DATABASE_URL
    server = _pgserver().get_server(_paths()["pgdata"], cleanup_mode=None)
    url = server.get_uri()
    config.DATABASE_URL_FILE.write_text(url + "\n")
    say(f"PostgreSQL up in {_paths()['pgdata']} ({url})")
    return url


def stop_postgres() -> None:
    pgdata = _paths()["pgdata"]
    if config.DATABASE_URL or not (pgdata / "postmaster.pid").exists():
        return
    pgserver = _pgserver()
    # pg_ctl itself: pgserver's own cleanup() leaves the server running while another
    # process still holds a handle to it.
    server = pgserver.get_server(pgdata, cleanup_mode=None)
    timeout = str(int(POSTGRES_STOP_SECONDS))
    try:
        pgserver.pg_ctl(["-w", "-t", timeout, "-m", "fast", "stop"], pgdata=pgdata, user=server.system_user)
    except subprocess.CalledProcessError:
        say(f"PostgreSQL did not stop within {timeout} s (fast shutdown): stopping it at once (immediate)")
        pgserver.pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=pgdata, user=server.system_user)
    config.DATABASE_URL_FILE.unlink(missing_ok=True)
    say("PostgreSQL stopped")


# --- Key ---------------------------------------------------------------------------
def ensure_key() -> None:
    if config.MASKING_KEYS:
        return
    path = Path(config.MASKING_KEYS_FILE)
    if create_development_key(path, config.STACK_DIR):
        say(f"made a development masking key in {path} (for this machine only)")
    else:
        say(f"masking key: {path}")


def up() -> None:
    """Start the stack; a failure stops what this call started, and is raised."""
    config.STACK_DIR.mkdir(parents=True, exist_ok=True)
    check_ports()
    postgres_was_up = config.DATABASE_URL or (_paths()["pgdata"] / "postmaster.pid").exists()
    started_localstack = start_localstack()
    try:
        start_postgres()
        provision.init()
        say("queues and schema ready")
        ensure_key()
    except BaseException:
        with contextlib.suppress(Exception):  # the first failure is the one to tell
            if not postgres_was_up:
                stop_postgres()
        if started_localstack:
            _stop_pid(_paths()["pid"], "LocalStack")
        raise


def down() -> None:
    """Stop LocalStack and PostgreSQL; SIGINT or SIGTERM meanwhile does not cut it short,
    it kills LocalStack at once (dev/devkit/children.py)."""
    children.SIGNALS.install()
    with children.SIGNALS.stopping():
        _stop_pid(_paths()["pid"], "LocalStack")
        stop_postgres()
