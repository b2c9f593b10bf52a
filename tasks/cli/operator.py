"""The root group, `python -m tasks`, and the operator's commands: what the production
image runs (tasks/ops). The developer's commands hang below it as `dev`, from the
development distribution (dev/devkit/cli.py), which registers through the
`login_pipeline.commands` entry point; where it is not installed (the image, a wheel),
`dev` says so in one line.

Commands are thin: they check their options (click ranges and choices), call the
layer's functions, imported when the command runs, and print the result. A failure is
raised and said once, in one line, by tasks/cli/errors.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, datetime
from importlib.metadata import entry_points
from typing import Any

import click

from tasks.cli.common import MOMENT, SECONDS, key_ring, refused, say
from tasks.cli.errors import Translating
from tasks.ops.failures import COMMAND_PLUGINS, Exit, Failure
from tasks.pipeline.reasons import CLASSES, SELECTABLE

PACKAGE = "login-pipeline"


@click.group(
    "pipeline", cls=Translating, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(package_name=PACKAGE, prog_name=PACKAGE, message="%(prog)s %(version)s")
@click.option("--debug", is_flag=True, help="On a failure, show the traceback too (also LOG_LEVEL=DEBUG).")
def root(debug: bool) -> None:
    """The login pipeline: SQS login events, masked, into PostgreSQL, by Celery.

    Operator commands below; the developer's (embedded stack, seed data, run, bench,
    faults) are under `dev`. Exit codes: 0 done, 1 a negative answer, 2 usage or
    configuration, 3 a service unreachable or a port taken, 4 a child process failed,
    5 an unforeseen error. The same commands run as `celery -A tasks pipeline ...`.
    """


@root.command()
def init() -> None:
    """Create the queues (with their dead-letter queues and attributes) and the schema.

    Against whatever the configuration names: the embedded stack, compose, or a real
    account and database. Safe to run again.
    """
    from tasks.ops import provision

    provision.init()
    say("queues and schema ready")


@root.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def status(as_json: bool) -> None:
    """Queue depths, rows, dead letters and duplicate deliveries.

    What it cannot reach is marked unreachable, with the reason, and the exit code is 3.
    """
    from tasks.ops import status as probe

    report = probe.survey()
    say(json.dumps(report, indent=2) if as_json else probe.render(report))
    if probe.unreachable(report):
        raise click.exceptions.Exit(Exit.UNREACHABLE)


@root.command()
@click.option("--beat", is_flag=True, help="Check beat's heartbeat (BEAT_HEALTH_FILE) instead of the worker's.")
@click.option(
    "--max-age", type=SECONDS, default=60, show_default=True, metavar="SECONDS", help="Oldest heartbeat that counts."
)
def health(beat: bool, max_age: float) -> None:
    """Liveness: exit 0 if this machine's worker (or beat) sent a heartbeat lately, else 1.

    Reads the file the worker touches on each heartbeat (WORKER_HEALTH_FILE), or beat on
    each tick (BEAT_HEALTH_FILE), no SQS call; says in one line how old it is.
    """
    from tasks.ops import health as probe

    verdict = probe.check("beat" if beat else "worker", max_age)
    say(verdict.line, err=not verdict.alive)
    if not verdict.alive:
        raise click.exceptions.Exit(Exit.NEGATIVE)


@root.command()
@click.option(
    "--address",
    metavar="ADDRESS",
    help="Where to listen (default METRICS_ADDRESS); beyond the loopback, basic auth is required.",
)
@click.option("--port", type=click.IntRange(1, 65535), metavar="PORT", help="Port (default METRICS_PORT).")
def metrics(address: str | None, port: int | None) -> None:
    """Serve the pipeline's Prometheus metrics without Flower, until stopped."""
    import celeryconfig as config
    from tasks.ops import exporter

    outcome = exporter.serve(address or config.METRICS_ADDRESS, port or config.METRICS_PORT)
    if outcome:
        raise click.exceptions.Exit(outcome)


@root.command()
@click.option("--dry-run", is_flag=True, help="Only count, by reason, what would move and what would stay.")
@click.option(
    "--reason",
    "reasons",
    multiple=True,
    type=click.Choice(SELECTABLE),
    metavar="CLASS",
    help="Only dead letters of this reason class (repeatable): transient (a batch given up after its retries:"
    " what an outage leaves), permanent, malformed (records that can never be rows), moved_by_sqs, or a class"
    f" of /metrics: {', '.join(CLASSES)}.",
)
@click.option(
    "--since", type=MOMENT, metavar="TIME", help="Only letters dead-lettered at or after TIME (UTC, or 2h ago)."
)
@click.option("--until", type=MOMENT, metavar="TIME", help="Only letters dead-lettered at or before TIME.")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="Move at most N messages.")
@click.option("--batches", is_flag=True, help="Replay the batch dead-letter queue (batch tasks SQS set aside).")
def redrive(
    dry_run: bool,
    reasons: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    limit: int | None,
    batches: bool,
) -> None:
    """Move dead letters back to login-queue once their cause is fixed, by reason.

    A record still bad is dead-lettered again with its reason; one already written is
    skipped as a duplicate (docs/reliability.md). A run moves only letters that were
    there when it began, each once; those it does not take stay, untouched. TIME is
    ISO 8601 (2026-12-07T14:05, UTC unless an offset is given) or an age (30m, 2h, 7d).
    """
    from tasks.ops.redrive import Filter, redrive_batches
    from tasks.ops.redrive import redrive as replay

    if since and until and since > until:
        raise click.UsageError("--since is later than --until: nothing could match")
    if batches:
        if reasons or since or until:
            raise click.UsageError("--reason, --since and --until pick record dead letters, not --batches")
        say(str(redrive_batches(limit=limit, dry_run=dry_run)))
        return
    where = Filter(frozenset(reasons), _ms(since), _ms(until))
    say(str(replay(key_ring(), limit=limit, dry_run=dry_run, where=where)))


def _ms(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


def _recovery(work: Callable[[Any, Any], list[str]], needs_siv: bool = True) -> None:
    """Check the key (and that the mode is siv, if it `needs_siv`), then run
    `work(connection, masker)` and print its lines."""
    import celeryconfig as config
    from tasks.ops import recovery
    from tasks.pipeline import store
    from tasks.pipeline.keys import MaskingKeyError
    from tasks.pipeline.service import load_masker

    try:
        masker = load_masker()
        if needs_siv:
            recovery.check_mode(masker)
    except (MaskingKeyError, ValueError, recovery.RecoveryRefused) as exc:
        raise refused(exc) from exc
    conn = store.connect(config.database_url())
    try:
        say("\n".join(work(conn, masker)))
    except (recovery.RecoveryRefused, recovery.TokenError, MaskingKeyError) as exc:
        raise refused(exc) from exc
    finally:
        conn.close()


def _day(value: datetime | None) -> date | None:
    return value.date() if value else None


@root.command()
@click.option("--field", type=click.Choice(["ip", "device_id"]), required=True, help="Which masked field.")
@click.option("--reason", required=True, help="Why (visible text); written to unmask_audit with each value.")
@click.option("--user-id", metavar="USER_ID", help="Recover the tokens of this user's rows.")
@click.option(
    "--since", type=click.DateTime(["%Y-%m-%d"]), metavar="YYYY-MM-DD", help="Rows created on or after this date."
)
@click.option(
    "--until", type=click.DateTime(["%Y-%m-%d"]), metavar="YYYY-MM-DD", help="Rows created on or before this date."
)
@click.argument("tokens", nargs=-1, metavar="[TOKEN]...")
def unmask(
    field: str, reason: str, user_id: str | None, since: datetime | None, until: datetime | None, tokens: tuple[str]
) -> None:
    """Recover masked values (siv mode, with the key), each one audited by the database.

    Give TOKENS of user_logins, or filters that pick them (docs/privacy.md).
    """
    from tasks.ops import recovery
    from tasks.ops.terminal import escaped

    where = recovery.TokenFilter(user_id, _day(since), _day(until))

    def work(conn: Any, masker: Any) -> list[str]:
        recovered = recovery.unmask(conn, masker, field, reason, where, list(tokens))
        return [f"{escaped(token)}\t{escaped(value)}" for token, value in recovered]

    _recovery(work)


@root.command()
@click.option(
    "--batch", type=click.IntRange(min=1), default=1000, show_default=True, metavar="ROWS", help="Rows per transaction."
)
@click.option(
    "--retire",
    type=click.IntRange(min=1),
    metavar="VERSION",
    help="Instead: retire this key version (re-mask what uses it, refuse while anything needs it, remove it).",
)
def rekey(batch: int, retire: int | None) -> None:
    """Re-tokenise rows to the newest key version (siv mode), in short resumable batches.

    With --retire VERSION, retire that version instead (either mode): re-mask its siv
    tokens, refuse while a row, a queued message or a recent tombstone needs it, and
    remove it from the key file (docs/privacy.md).
    """
    from tasks.ops import recovery

    if retire is not None:  # in either mode (tasks/ops/retirement.py)
        from tasks.ops import retirement

        _recovery(lambda conn, masker: retirement.retire(conn, masker, retire, batch).lines(), needs_siv=False)
        return

    def work(conn: Any, masker: Any) -> list[str]:
        lines = [f"re-keyed {recovery.rekey(conn, masker, batch)} rows"]
        if one_way := recovery.one_way_rows(conn):
            lines.append(f"{one_way} rows keep hmac tokens: one-way, they cannot be re-keyed (docs/privacy.md)")
        return lines

    _recovery(work)


@root.command()
@click.option("--user-id", metavar="USER_ID", help="The user to forget.")
@click.option("--reason", help="Why (visible text, e.g. the request's ticket); written to erasure_audit.")
@click.option(
    "--from-file",
    type=click.File("r", encoding="utf-8"),
    metavar="FILE",
    help="Requests, one a line: USER_ID, or USER_ID<TAB>REASON (else --reason); `-` for stdin.",
)
@click.option(
    "--scan-limit",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    metavar="N",
    help="Messages read per dead-letter queue in one pass.",
)
def forget(user_id: str | None, reason: str | None, from_file: Any, scan_limit: int) -> None:
    """Erase users: their rows, dead letters and set-aside events, with an audit and a tombstone.

    Later batches and `redrive` drop their events sent before the erasure. The audit and
    the tombstone keep a keyed hash of the user id, never the id. Safe to run again
    (docs/privacy.md).
    """
    from tasks.ops import erasure

    if (user_id is None) == (from_file is None):
        raise click.UsageError("give --user-id or --from-file (not both)")
    try:
        if from_file is not None:
            requests = erasure.read_requests(from_file, reason)
        else:
            requests = [erasure.Request(str(user_id), reason or "")]
        erasure.check(requests)
    except erasure.ErasureRefused as exc:
        raise refused(exc) from exc
    say(str(erasure.forget(key_ring(), requests, scan_limit)))


@root.command()
@click.option(
    "--older-than",
    type=click.FloatRange(min=0),
    default=3600,
    show_default=True,
    metavar="SECONDS",
    help="Only queues that have lived this long.",
)
def sweep(older_than: float) -> None:
    """Remove the queues and SNS subscriptions that killed Flower or `inspect` processes left."""
    from tasks.ops import sweep as sweeper

    swept = sweeper.sweep(older_than)
    say(f"removed {swept['queues']} queues and {swept['subscriptions']} subscriptions")


@root.command()
def config() -> None:
    """The settings in effect, each marked environment or default, secrets hidden."""
    from tasks.ops import settings_report

    say(settings_report.render(settings_report.settings_in_effect()))


NOT_INSTALLED = "the development commands are not installed here: a checkout's `make demo` installs them"


def unavailable(name: str, why: str) -> click.Command:
    """A stand-in for a plug-in group that is missing or does not load: it says why, in one
    line (exit 2), and the operator's commands work on."""

    @click.command(name, context_settings={"ignore_unknown_options": True}, help=why)
    @click.argument("words", nargs=-1, type=click.UNPROCESSED)
    def command(words: tuple[str, ...]) -> None:
        raise Failure(why, Exit.USAGE)

    return command


def add_plugins(group: click.Group) -> None:
    """The command groups other distributions register (`login_pipeline.commands`), last:
    the operator's commands come first in `--help` and docs/commands.md."""
    for entry in entry_points(group=COMMAND_PLUGINS):
        try:
            group.add_command(entry.load(), entry.name)
        except Exception as exc:  # a broken development install must not take `status` with it
            reason = f"the {entry.name} commands did not load ({type(exc).__name__}: {exc}); make demo reinstalls them"
            group.add_command(unavailable(entry.name, reason))
    if "dev" not in group.commands:
        group.add_command(unavailable("dev", NOT_INSTALLED))


add_plugins(root)
