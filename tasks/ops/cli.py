"""The `python -m tasks` commands: stack, seed, run, redrive, unmask, rekey, bench, health, metrics, status."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

import celeryconfig as config


def _stack(args: argparse.Namespace) -> int:
    if args.action == "sweep":
        from tasks.ops import sweep

        print(sweep.sweep(args.older_than))
        return 0
    if args.action == "init":
        from tasks.ops import provision

        provision.init()
        return 0
    from tasks.dev import stack

    {"up": stack.up, "down": stack.down}[args.action]()
    return 0


def _seed(args: argparse.Namespace) -> int:
    from tasks.dev import seed

    bodies = seed.sample_bodies() if args.count is None else [b for b, _ in seed.generate(args.count)]
    print(f"sent {seed.send(config.SOURCE_QUEUE, bodies)} events to {config.SOURCE_QUEUE}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from tasks.dev import runner

    return runner.run(
        drain=args.drain, seed_count=args.seed, with_flower=not args.drain or args.flower, as_json=args.json
    )


def _status(args: argparse.Namespace) -> int:
    from tasks.ops import status

    report = status.collect()
    print(json.dumps(report, indent=2) if args.json else status.render(report))
    return 0


def _redrive(args: argparse.Namespace) -> int:
    from tasks.ops.redrive import redrive, redrive_batches

    if args.batches:
        print(redrive_batches(limit=args.limit, dry_run=args.dry_run))
        return 0
    return _with_keys(lambda keys: print(redrive(keys, limit=args.limit, dry_run=args.dry_run)))


def _refusal(exc: Exception) -> int:
    print(f"refused: {exc}", file=sys.stderr)
    return 2


def _with_keys(work: Callable[[Any], object]) -> int:
    """Run `work(key_ring)`; no usable key exits 2 with one line, never a traceback."""
    from tasks.pipeline.keys import MaskingKeyError
    from tasks.pipeline.service import load_key_ring_checked

    try:
        keys = load_key_ring_checked()
    except MaskingKeyError as exc:
        return _refusal(exc)
    work(keys)
    return 0


def _recovery_command(work: Callable[[Any, Any], list[str]]) -> int:
    """Check the key and the mode, then run `work(connection, masker)` and print its
    lines; a refusal exits 2 with its reason on one line."""
    from tasks.ops import recovery
    from tasks.pipeline import store
    from tasks.pipeline.keys import MaskingKeyError
    from tasks.pipeline.service import load_masker

    try:
        masker = load_masker()
        recovery.check_mode(masker)
    except (MaskingKeyError, ValueError, recovery.RecoveryRefused) as exc:
        return _refusal(exc)
    conn = store.connect(config.database_url())
    try:
        print("\n".join(work(conn, masker)))
    except (recovery.RecoveryRefused, recovery.TokenError, MaskingKeyError) as exc:
        return _refusal(exc)
    finally:
        conn.close()
    return 0


def _unmask(args: argparse.Namespace) -> int:
    from tasks.ops import recovery

    where = recovery.TokenFilter(args.user_id, args.since, args.until)

    def work(conn: Any, masker: Any) -> list[str]:
        recovered = recovery.unmask(conn, masker, args.field, args.reason, where, args.tokens)
        return [f"{token}\t{value}" for token, value in recovered]

    return _recovery_command(work)


def _rekey(args: argparse.Namespace) -> int:
    from tasks.ops import recovery

    return _recovery_command(lambda conn, masker: [f"re-keyed {recovery.rekey(conn, masker, args.batch)} rows"])


def _bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tasks.dev import bench

    out = Path(args.out)
    return _with_keys(lambda _: print(bench.report(bench.bench(args.events, out), out)))


def _faults(args: argparse.Namespace) -> int:
    if args.soak is not None:
        from tasks.dev import soak

        return soak.run(args.soak, args.seed)
    from tasks.dev import faults

    return faults.run(write=args.write_docs)


def _conformance(args: argparse.Namespace) -> int:
    from tasks.dev import conformance

    if args.probe:
        return conformance.probe(args.probe)
    if args.repeat:
        if not args.only:
            raise SystemExit("conformance --repeat needs --only path::class::test (the test to repeat)")
        return conformance.repeat(args.only, args.repeat)
    return conformance.run(per_test=not args.per_file_only, only=args.only, write=args.write_docs, fresh=args.fresh)


def _config(args: argparse.Namespace) -> int:
    from tasks.ops import readme, settings_report

    if args.write_readme:
        readme.write_settings_table()
    else:
        print(settings_report.render(settings_report.settings_in_effect()))
    return 0


def _health(args: argparse.Namespace) -> int:
    from tasks.ops.health import check

    health = check("beat" if args.beat else "worker", args.max_age)
    print(health.line, file=sys.stdout if health.alive else sys.stderr)
    return 0 if health.alive else 1


def _metrics(args: argparse.Namespace) -> int:
    from tasks.ops import exporter

    return exporter.serve(args.address, args.port)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tasks", description="The login pipeline.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("stack", help="start or stop the embedded LocalStack and PostgreSQL")
    s.add_argument("action", choices=["up", "down", "init", "sweep"])
    s.add_argument("--older-than", type=float, default=3600, help="sweep: seconds a queue must have lived")
    s.set_defaults(func=_stack)

    s = sub.add_parser("seed", help="send events to login-queue (default: the exercise's 100)")
    s.add_argument("--count", type=int, help="that many realistic events, anomalies included")
    s.set_defaults(func=_seed)

    s = sub.add_parser("run", help="run worker, beat and Flower on the embedded stack")
    s.add_argument("--drain", action="store_true", help="stop once the queues are empty, print a summary")
    s.add_argument("--seed", type=int, default=0, metavar="N", help="seed N events first")
    s.add_argument("--flower", action="store_true", help="also run Flower in drain mode")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.add_argument("--timeout", type=float, default=900, help="give up draining after this many seconds")
    s.set_defaults(func=_run)

    s = sub.add_parser("redrive", help="move dead letters back to login-queue once their cause is fixed")
    s.add_argument("--dry-run", action="store_true", help="only report what would move, by reason")
    s.add_argument("--limit", type=int, help="move at most this many")
    s.add_argument("--batches", action="store_true", help="replay the batch dead-letter queue instead")
    s.set_defaults(func=_redrive)

    s = sub.add_parser("unmask", help="recover masked values (siv mode, with the key), audited")
    s.add_argument("--field", choices=["ip", "device_id"], required=True)
    s.add_argument("--reason", required=True, help="why (visible text); written to unmask_audit with each value")
    s.add_argument("--user-id", help="recover the tokens of this user's rows")
    s.add_argument("--since", type=date.fromisoformat, help="rows created on or after this date (YYYY-MM-DD)")
    s.add_argument("--until", type=date.fromisoformat, help="rows created on or before this date (YYYY-MM-DD)")
    s.add_argument("tokens", nargs="*", help="tokens of user_logins to recover (instead of the filters)")
    s.set_defaults(func=_unmask)

    s = sub.add_parser("rekey", help="re-tokenise rows to the newest key version (siv mode), resumable")
    s.add_argument("--batch", type=int, default=1000)
    s.set_defaults(func=_rekey)

    s = sub.add_parser("bench", help="throughput of the pipeline against the single-client ceiling")
    s.add_argument("--events", type=int, default=100_000)
    s.add_argument("--out", default="bench-results", help="folder for bench.json and throughput.png")
    s.set_defaults(func=_bench)

    s = sub.add_parser("faults", help="run the fault scenarios on a test stack and print their table")
    s.add_argument("--write-docs", action="store_true", help="write the table into docs/reliability.md")
    s.add_argument("--soak", type=float, metavar="MINUTES", help="instead: the randomized soak, faults combined")
    s.add_argument("--seed", type=int, default=1, help="the soak's seed: the same seed, the same fault schedule")
    s.set_defaults(func=_faults)

    s = sub.add_parser("conformance", help="Celery's and kombu's integration suites, stock SQS against ours")
    s.add_argument("--per-file-only", action="store_true", help="skip the one-session-per-test runs")
    s.add_argument("--only", help="only the targets whose path contains this")
    s.add_argument("--write-docs", action="store_true", help="write the table into docs/transport.md")
    s.add_argument("--fresh", action="store_true", help="forget the sessions measured before (they resume otherwise)")
    s.add_argument(
        "--repeat", type=int, metavar="N", help="run the one test --only names N times; print its pass count"
    )
    s.add_argument("--probe", type=int, metavar="N", help="time an ETA task and the inspect sent after it, N times")
    s.set_defaults(func=_conformance)

    s = sub.add_parser("config", help="the settings in effect, each marked environment or default, secrets hidden")
    s.add_argument("--write-readme", action="store_true", help="write README's table of every setting (declarations)")
    s.set_defaults(func=_config)

    s = sub.add_parser("health", help="exit 0 if this machine's worker (or beat) sent a heartbeat lately (liveness)")
    s.add_argument("--beat", action="store_true", help="check beat's heartbeat instead of the worker's")
    s.add_argument("--max-age", type=float, default=60, help="seconds a heartbeat stays fresh")
    s.set_defaults(func=_health)

    s = sub.add_parser("metrics", help="serve the pipeline's Prometheus metrics without Flower")
    s.add_argument("--address", default=config.METRICS_ADDRESS, help="beyond the loopback, basic auth is required")
    s.add_argument("--port", type=int, default=config.METRICS_PORT)
    s.set_defaults(func=_metrics)

    s = sub.add_parser("status", help="queue depths, rows and dead letters")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_status)
    return p


@dataclass(frozen=True)
class CommandWords:
    """What a subcommand takes: its --options, and the choices of its first positional
    argument (`stack up`), if it has any."""

    options: frozenset[str]
    choices: frozenset[str]


def commands() -> dict[str, CommandWords]:
    """Every subcommand of `python -m tasks` and the words it takes, from the parser
    itself: what README and docs may name (tests/unit/test_docs_cli.py)."""
    found: dict[str, CommandWords] = {}
    for action in parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                options = {o for a in sub._actions for o in a.option_strings if o.startswith("--")}
                positional = [a for a in sub._actions if not a.option_strings and a.choices]
                choices = {str(c) for c in positional[0].choices} if positional else set()
                found[name] = CommandWords(frozenset(options), frozenset(choices))
    return found


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("tasks.dev"):
            raise
        print(f"`{args.command}` is a development command (tasks/dev); this install does not carry it", file=sys.stderr)
        return 2
