"""The tests' shared helpers: real processes (started, tracked and always killed with
their process group), waiting for a condition, free ports, the outages a test causes
(a TCP proxy cut, the database refusing connections, a frozen process group), a feeder
of events, and reading the queues and the ledger the way an operator would."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import celeryconfig as config
from devkit import runner, seed
from tasks.broker import aws
from tasks.ops import status
from tasks.pipeline import store

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
# How long a warm shutdown may take here: the longest fetch (FETCH_MAX_SECONDS) or
# batch, plus 10 s. In production: the hard time limit plus 10 s (docs/commands.md, on how `dev run` ends).
SHUTDOWN_BOUND = config.FETCH_MAX_SECONDS + 15


STARTED: list[subprocess.Popen] = []


def spawn(
    command: list[str], log: Path | None = None, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.Popen:
    """Start a process (from the checkout unless `cwd`) in a session (process group) of its
    own, tracked for `kill_all`."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - the child keeps it
    try:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    finally:
        if log:
            out.close()
    STARTED.append(process)
    return process


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL a process and everything in its process group, reap it, and forget it, so
    that its pid, once reused by someone else, is never signalled again."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    with contextlib.suppress(ValueError):
        STARTED.remove(process)


def kill_all() -> None:
    """Kill every process group the tests started, whatever their outcome."""
    while STARTED:
        kill_group(STARTED.pop())


def processes_of(stack_dir: Path) -> list[int]:
    """Pids of the processes whose environment names this stack folder: everything the
    suite started, directly or through `python -m tasks`."""
    marker = f"STACK_DIR={stack_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found


def own_stack_dir(stack_dir: Path) -> dict[str, str]:
    """The environment for a `python -m tasks` command on the session's stack (its
    LocalStack, PostgreSQL and key) with a STACK_DIR of its own: its logs go there, and
    `processes_of(stack_dir)` finds its processes and no one else's."""
    return {"STACK_DIR": str(stack_dir), "DATABASE_URL": config.database_url()}


def stacks_of(pid: int) -> str:
    """Every thread's stack of each live process in `pid`'s process group (py-spy): a
    worker that hangs in Pool.join is waiting on a pool child, whose stack says why."""
    spy = Path(sys.executable).parent / "py-spy"
    dumps = []
    for member in [pid, *(p for p in _group_members(pid) if p != pid)]:
        try:
            result = subprocess.run(
                [str(spy), "dump", "--pid", str(member)], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            dumps.append(f"(no stacks of {member}: {exc!r})")
            continue
        dumps.append(result.stdout[-4000:] or result.stderr[-1000:])
    return "\n".join(dumps)


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if os.getpgid(int(entry.name)) == pgid:
                    members.append(int(entry.name))
    return members


class Worker:
    """A real `celery -A tasks worker` process (and beat, if asked)."""

    def __init__(
        self,
        name: str,
        beat: bool = False,
        env: dict[str, str] | None = None,
        heartbeat: bool = False,
        args: list[str] | None = None,
        ready: bool = True,
        gossip: bool = False,
    ) -> None:
        """Start the worker; with `ready`, wait until it says so (else call `ready()`)."""
        self.name = name
        self.log = new_log(config.STACK_DIR / f"{name}.log")
        command = [*runner.worker_command(name), "--without-mingle", *(args or [])]
        if not gossip:
            command.append("--without-gossip")
        if not heartbeat:
            command.append("--without-heartbeat")
        if beat:
            command.append("--beat")
        self.process = spawn(command, self.log, env)
        if ready:
            self.ready()

    def is_ready(self) -> bool:
        """Whether it said it is ready (without waiting)."""
        return "ready." in self.log.read_text(errors="replace")

    def ready(self) -> None:
        try:
            self.wait_for("ready.")
        except BaseException:
            self.kill()
            raise

    @property
    def node(self) -> str:
        """The worker's node name, as Celery and Flower show it."""
        return f"{self.name}@{socket.gethostname()}"

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log.read_text(errors="replace"):
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{self.name}: no {text!r} in {timeout} s"
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once, as a crash would."""
        kill_group(self.process)

    def stop(self, sig: int = signal.SIGTERM, within: float = 60) -> int:
        """Signal the worker and wait for it to exit; past `within` seconds it is killed
        with its process group and the test fails. Its group is always gone after."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=within)
        except subprocess.TimeoutExpired:
            stacks = stacks_of(self.process.pid)
            raise AssertionError(f"{self.name} did not exit within {within} s of signal {sig}:\n{stacks}") from None
        finally:
            kill_group(self.process)


GIVEN_PORTS: set[int] = set()


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on now, and never given before in
    this session: the kernel hands a port out again within a second, and a test that named
    a log by its port then read the last test's "serving" line as its own."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in GIVEN_PORTS:
            GIVEN_PORTS.add(port)
            return port


def new_log(path: Path) -> Path:
    """`path`, or `name-2.log`, `-3`, … if a process of this session has written there: a
    wait for a line in a log must never find an earlier process's line."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def wait_until(predicate: Callable[[], T], timeout: float = 60, poll: float = 0.5, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)
    return value


class Outage:
    """A TCP proxy in front of a port, whose traffic a test can cut and restore.

    While cut, the listening socket is closed and every open connection dropped, so
    clients see connection refused and resets: the endpoint is unreachable.
    """

    def __init__(self, listen_port: int, target_port: int) -> None:
        self.listen_port, self.target_port = listen_port, target_port
        self.server: socket.socket | None = None
        self.connections: list[socket.socket] = []
        self.lock = threading.Lock()
        self.restore()

    def restore(self) -> None:
        server = socket.create_server(("127.0.0.1", self.listen_port), reuse_port=True)
        self.server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def cut(self) -> None:
        server, self.server = self.server, None
        if server:
            server.close()
        with self.lock:
            for conn in self.connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                    conn.close()
            self.connections.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                return
            with self.lock:
                self.connections += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


class RefusedConnections:
    """The pipeline's database refusing connections, as in an outage or a restart: while
    cut, new connections are refused and every open one is terminated."""

    def __init__(self, database_url: str, database: str = "postgres") -> None:
        self.admin_url = database_url.replace(f"/{database}?", "/template1?")
        self.database = database

    def _admin(self, *statements: str) -> None:
        admin = store.connect(self.admin_url)
        admin.autocommit = True
        try:
            with admin.cursor() as cur:
                for statement in statements:
                    cur.execute(statement, {"db": self.database})
        finally:
            admin.close()

    def cut(self) -> None:
        self._admin(
            f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS false',
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %(db)s",
        )

    def restore(self) -> None:
        self._admin(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS true')


class Frozen:
    """SIGSTOP, then SIGCONT, the process group of a process this test stack started (its
    environment names the stack folder): never anyone else's."""

    def __init__(self, pid: int) -> None:
        assert pid in processes_of(config.STACK_DIR), f"process {pid} is not this test stack's"
        assert os.getpgid(pid) == pid, f"process {pid} does not lead its own process group"
        self.pgid = pid

    def cut(self) -> None:
        os.killpg(self.pgid, signal.SIGSTOP)

    def restore(self) -> None:
        os.killpg(self.pgid, signal.SIGCONT)


def flower_request(
    port: int,
    path: str,
    method: str = "GET",
    auth: tuple[str, str] | None = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str]:
    """Flower's status and body for one request (an HTTP error is an answer too)."""
    headers = dict(headers or {})
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def flower_api(port: int, path: str, auth: tuple[str, str] | None = None) -> object:
    """Flower's answer at `path` (JSON decoded, except the health check and metrics)."""
    try:
        status, body = flower_request(port, path, auth=auth)
    except OSError:
        return None
    if status != 200:
        return None
    return body if path in ("/healthcheck", "/metrics") else json.loads(body)


def start_flower(port: int, env: dict[str, str] | None = None, name: str = "flower") -> subprocess.Popen:
    """`celery -A tasks flower --conf=flowerconfig.py` on `port`, once it answers; its log in STACK_DIR."""
    process = spawn(
        [sys.executable, "-m", "celery", "-A", "tasks", "flower", "--conf=flowerconfig.py"],
        config.STACK_DIR / f"{name}-{port}.log",  # a new file: free_port never repeats
        {"FLOWER_PORT": str(port), **(env or {})},
    )
    try:
        wait_until(lambda: flower_api(port, "/healthcheck") == "OK", timeout=30, what="Flower")
    except AssertionError:
        stop_process(process)
        raise
    return process


def stop_process(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM a process started in its own session, then SIGKILL its whole group."""
    if process.poll() is None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
    kill_group(process)


def python_m_tasks(
    *args: str, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m tasks ...` as a user would; its process group is killed after."""
    return command([sys.executable, "-m", "tasks", *args], timeout, env)


def command(
    argv: list[str], timeout: float = 600, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """Run a command to its end (from the checkout unless `cwd`), output captured; its
    process group is killed after."""
    process = subprocess.Popen(
        argv,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    STARTED.append(process)
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        kill_group(process)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def send_with_ids(messages: dict[str, str]) -> None:
    """Send bodies under fixed message ids, as a redrive carries them (signed)."""
    from tasks.pipeline.records import SourceMessage
    from tasks.pipeline.service import load_key_ring_checked
    from tasks.pipeline.source import redrive_attributes

    keys, sent = load_key_ring_checked(), int(time.time() * 1000)
    sqs, url = aws.client("sqs"), aws.queue_url(config.SOURCE_QUEUE)
    for chunk in aws.chunks(list(messages.items())):
        entries = [
            {
                "Id": str(i),
                "MessageBody": body,
                "MessageAttributes": redrive_attributes(SourceMessage(mid, sent, body), keys),
            }
            for i, (mid, body) in enumerate(chunk)
        ]
        assert not sqs.send_message_batch(QueueUrl=url, Entries=entries).get("Failed")


def dead_letters(queue: str | None = None) -> list[dict[str, Any]]:
    """Every message now visible in a dead-letter queue (hidden for 30 s once read)."""
    sqs, url, found = aws.client("sqs"), aws.queue_url(queue or config.DEAD_LETTER_QUEUE), []
    while got := sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], VisibilityTimeout=30
    ).get("Messages"):
        found += got
    return found


def dead_letter_ids() -> dict[str, str]:
    """Every dead letter now in login-queue-dlq: original id -> reason ("" where it has
    none: SQS's own redrive of a message received SOURCE_MAX_RECEIVES times)."""
    letters = {}
    for m in dead_letters():
        attributes = m["MessageAttributes"]
        reason = attributes.get("reason", {}).get("StringValue", "")
        letters[attributes.get("source_message_id", {}).get("StringValue", m["MessageId"])] = reason
    return letters


def tally(messages: dict[str, str], db: store.Connection) -> dict[str, Any]:
    """How the events sent ended: rows, dead letters (`letters`: id -> reason), duplicate
    deliveries skipped, and how many are lost (neither) or doubled (two rows, or a row
    and a dead letter). Read once the pipeline is idle."""
    with db.cursor() as cur:
        cur.execute("SELECT message_id FROM user_logins")
        rows = [r[0] for r in cur.fetchall()]
    db.rollback()
    letters = dead_letter_ids()
    return {
        "sent": len(messages),
        "rows": len(rows),
        "dead_letters": len(letters),
        "duplicate_deliveries_skipped": store.totals(db)["duplicates"],
        "lost": len(set(messages) - set(rows) - set(letters)),
        "doubled": len(rows) - len(set(rows)) + len(set(rows) & set(letters)),
        "letters": letters,
    }


class Feeder:
    """Sends `per_second` events a second from a thread, so that batches keep flowing
    (a chunk each second; behind, after a slow send, the next chunks go at once).

    A chunk is counted as sent before it goes out, and sent again (same ids) until SQS
    takes it: a slow or frozen SQS delays the feed, and a chunk SQS took but whose answer
    was lost is a duplicate delivery, which the pipeline skips. Only a chunk that could
    never be sent shows as lost, and `stop` then fails with the error."""

    def __init__(self, per_second: int, seed_value: int, prefix: str | None = None) -> None:
        self.messages: dict[str, str] = {}
        self.valid = 0
        self.error: str | None = None
        self.stopped = threading.Event()
        prefix = prefix or str(seed_value)
        self.thread = threading.Thread(target=self._feed, args=(per_second, seed_value, prefix), daemon=True)
        self.thread.start()

    def _feed(self, per_second: int, seed_value: int, prefix: str) -> None:
        generated = seed.generate(10**7, seed=seed_value)
        n, tick = 0, time.monotonic()
        while not self.stopped.wait(max(0.0, (tick := tick + 1.0) - time.monotonic())):  # behind: catch up
            chunk = {}
            for body, valid in (next(generated) for _ in range(per_second)):
                chunk[f"{prefix}-{n}"] = body
                self.valid += valid
                n += 1
            self.messages.update(chunk)
            try:
                self._send(chunk)
            except Exception as exc:
                self.error = f"the feeder could not send {len(chunk)} events: {exc!r}"
                return

    @staticmethod
    def _send(chunk: dict[str, str], attempts: int = 10) -> None:
        for attempt in range(attempts):
            try:
                send_with_ids(chunk)
                return
            except Exception:
                if attempt == attempts - 1:
                    raise
                time.sleep(1)  # SQS slow, frozen or refusing: a second, then the same ids again

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=120)
        assert not self.thread.is_alive(), "the feeder did not stop within 120 s"
        assert self.error is None, self.error


def drained(db: store.Connection, expected: int, timeout: float = 120) -> dict[str, int]:
    """The totals once `expected` messages were processed and the queues are idle."""

    def done() -> dict[str, int] | None:
        totals = store.totals(db)
        return totals if totals["received"] >= expected and status.pipeline_idle(status.collect()) else None

    return wait_until(done, timeout=timeout, what=f"{expected} messages processed")


def settle(timeout: float = 240) -> None:
    """Until login-queue and the batch queue stayed empty three polls in a row."""
    runner.wait_until_drained(timeout, poll=1, settle=3)


def reset_pipeline() -> None:
    """Empty every queue of the test stack and the pipeline's tables."""
    sqs = aws.client("sqs")
    for url in sqs.list_queues().get("QueueUrls", []):
        sqs.purge_queue(QueueUrl=url)
    conn = store.connect(config.database_url())
    with conn, conn.cursor() as cur:
        cur.execute("TRUNCATE user_logins, dead_letters, ingest_batches, erasure_tombstones, erasure_audit")
    conn.close()


def raw_values(bodies: list[str]) -> set[str]:
    """Every ip and device_id in the bodies that parse as JSON objects: none may show anywhere."""
    found = set()
    for body in bodies:
        try:
            record = json.loads(body)
        except ValueError:
            continue
        if isinstance(record, dict):
            found |= {str(v) for k in ("ip", "device_id") if isinstance(v := record.get(k), str | int) and v}
    return found
