"""Every command's failure as one line and a documented exit code, in one place.

The root group is a `Translating` group: whatever a command below it raises, a `Failure`
a layer raised with its line and code, or any service error (PostgreSQL, SQS/SNS,
timeouts, a port taken), is said in one line by `tasks.ops.failures.describe` and ends
the command with its code, also when the group runs as `celery pipeline`. `main`, for
`python -m tasks`, also puts click's usage errors (exit 2) on one line. No traceback
unless asked for, with `--debug` or LOG_LEVEL=DEBUG; the codes are listed in
tasks/ops/failures.py and docs/commands.md.
"""

from __future__ import annotations

import sys
import traceback

import click

from tasks.ops.failures import ChildFailed, Exit, describe
from tasks.ops.terminal import printable

INTERRUPTED = 130  # the shell's own code for Ctrl-C


def _debug_by_environment() -> bool:
    """LOG_LEVEL=DEBUG (celeryconfig). A configuration that cannot load has said its one
    line already (ConfigurationError) and ends the command before this is asked."""
    import celeryconfig

    return celeryconfig.LOG_LEVEL == "DEBUG"


def _say(line: str) -> None:
    click.echo(printable(line), err=True)


def report(exc: BaseException, debug: bool) -> int:
    """Print the failure's line (after its traceback, when debugging); its exit code."""
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    described = describe(exc)
    _say(described.line)
    if isinstance(exc, ChildFailed) and exc.tail:
        _say("\n".join(f"  | {line}" for line in exc.tail.splitlines()))
    return int(described.code)


class Translating(click.Group):
    """A group whose commands' failures end in one line and their exit code."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            code = report(exc, bool(ctx.params.get("debug")) or _debug_by_environment())
            raise click.exceptions.Exit(code) from None


def main(argv: list[str] | None = None, prog_name: str | None = None) -> int:
    from tasks.cli.operator import root

    try:
        result = root.main(args=argv, prog_name=prog_name, standalone_mode=False)
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
    except Exception as exc:  # raised outside any command (click's own machinery)
        return report(exc, _debug_by_environment())
    return int(result or Exit.OK)
