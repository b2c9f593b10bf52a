"""The root group, `python -m tasks`, and the operator's commands: what the production
image runs (tasks/ops). The developer's commands hang below it as `dev` (tasks/cli/dev.py).

Commands are thin: they check their options (click ranges and choices), call the
layer's functions, imported when the command runs, and print the result. A failure is
raised and said once, in one line, by tasks/cli/errors.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, datetime
from typing import Any

import click

from tasks.cli.common import SECONDS, key_ring, refused
from tasks.cli.dev import dev
from tasks.cli.errors import Translating
from tasks.ops.failures import Exit

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
    click.echo("queues and schema ready")


@root.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def status(as_json: bool) -> None:
    """Queue depths, rows, dead letters and duplicate deliveries.

    What it cannot reach is marked unreachable, with the reason, and the exit code is 3.
    """
    from tasks.ops import status as probe

    report = probe.survey()
    click.echo(json.dumps(report, indent=2) if as_json else probe.render(report))
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
    click.echo(verdict.line, err=not verdict.alive)
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
@click.option("--dry-run", is_flag=True, help="Only say what would move and what would stay, by reason.")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="Move at most N messages.")
@click.option("--batches", is_flag=True, help="Replay the batch dead-letter queue (batch tasks SQS set aside).")
def redrive(dry_run: bool, limit: int | None, batches: bool) -> None:
    """Move dead letters back to login-queue once their cause is fixed, by reason.

    A record still bad is dead-lettered again with its reason; one already written is
    skipped as a duplicate (docs/reliability.md).
    """
    from tasks.ops.redrive import redrive as replay
    from tasks.ops.redrive import redrive_batches

    if batches:
        click.echo(str(redrive_batches(limit=limit, dry_run=dry_run)))
    else:
        click.echo(str(replay(key_ring(), limit=limit, dry_run=dry_run)))


def _recovery(work: Callable[[Any, Any], list[str]]) -> None:
    """Check the key and the mode, then run `work(connection, masker)` and print its lines."""
    import celeryconfig as config
    from tasks.ops import recovery
    from tasks.pipeline import store
    from tasks.pipeline.keys import MaskingKeyError
    from tasks.pipeline.service import load_masker

    try:
        masker = load_masker()
        recovery.check_mode(masker)
    except (MaskingKeyError, ValueError, recovery.RecoveryRefused) as exc:
        raise refused(exc) from exc
    conn = store.connect(config.database_url())
    try:
        click.echo("\n".join(work(conn, masker)))
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

    where = recovery.TokenFilter(user_id, _day(since), _day(until))

    def work(conn: Any, masker: Any) -> list[str]:
        recovered = recovery.unmask(conn, masker, field, reason, where, list(tokens))
        return [f"{token}\t{value}" for token, value in recovered]

    _recovery(work)


@root.command()
@click.option(
    "--batch", type=click.IntRange(min=1), default=1000, show_default=True, metavar="ROWS", help="Rows per transaction."
)
def rekey(batch: int) -> None:
    """Re-tokenise rows to the newest key version (siv mode), in short resumable batches."""
    from tasks.ops import recovery

    _recovery(lambda conn, masker: [f"re-keyed {recovery.rekey(conn, masker, batch)} rows"])


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
    click.echo(f"removed {swept['queues']} queues and {swept['subscriptions']} subscriptions")


@root.command()
@click.option("--write-readme", is_flag=True, help="Write README's tables of every setting and metric instead.")
def config(write_readme: bool) -> None:
    """The settings in effect, each marked environment or default, secrets hidden."""
    from tasks.ops import readme, settings_report

    if write_readme:
        readme.write_settings_table()
    else:
        click.echo(settings_report.render(settings_report.settings_in_effect()))


root.add_command(dev)  # last: the operator's commands come first in `--help` and README
