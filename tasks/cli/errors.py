"""Every command's failure as one line and a documented exit code, in one place.

`main` runs the click tree and translates whatever a command raises: click's own usage
errors (exit 2), a `Failure` a layer raised with its line and code, and any service error
(PostgreSQL, SQS/SNS, timeouts, a port taken) through `tasks.ops.failures.describe`.
No traceback unless asked for, with `--debug` or LOG_LEVEL=DEBUG; the codes are listed in
tasks/ops/failures.py and README ("Exit codes").
"""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass

import click

from tasks.ops.failures import ChildFailed, Exit, describe

INTERRUPTED = 130  # the shell's own code for Ctrl-C


@dataclass
class State:
    """What the root group's options set for the whole invocation."""

    debug: bool = False


def _debug_by_environment() -> bool:
    """LOG_LEVEL=DEBUG (celeryconfig), read from the environment when the configuration
    itself could not load."""
    try:
        import celeryconfig

        return str(celeryconfig.LOG_LEVEL).upper() == "DEBUG"
    except Exception:
        return os.environ.get("LOG_LEVEL", "").upper() == "DEBUG"


def _say(line: str) -> None:
    click.echo(line, err=True)


def report(exc: BaseException, debug: bool) -> int:
    """Print the failure's line (after its traceback, when debugging); its exit code."""
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    described = describe(exc)
    _say(described.line)
    if isinstance(exc, ChildFailed) and exc.tail:
        _say("\n".join(f"  | {line}" for line in exc.tail.splitlines()))
    return int(described.code)


def main(argv: list[str] | None = None, prog_name: str | None = None) -> int:
    from tasks.cli.operator import root

    state = State()
    try:
        result = root.main(args=argv, prog_name=prog_name, standalone_mode=False, obj=state)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:  # a bad option or value: one line too
        where = exc.ctx.command_path if exc.ctx else "python -m tasks"
        _say(f"usage: {exc.format_message()} (see `{where} --help`)")
        return exc.exit_code
    except click.ClickException as exc:
        _say(exc.format_message())
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        _say("interrupted")
        return INTERRUPTED
    except Exception as exc:
        return report(exc, state.debug or _debug_by_environment())
    return int(result or Exit.OK)
