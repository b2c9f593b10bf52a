"""What the operator's and the developer's commands share: option types, the checks
that refuse a command before it starts its work (exit 2), and printing."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from tasks.ops.failures import Exit, Failure
from tasks.ops.terminal import printable

SECONDS = click.FloatRange(min=0, min_open=True)
AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Moment(click.ParamType):
    """A point in time: ISO 8601, in UTC unless it names an offset (2026-12-07,
    2026-12-07T14:05, 2026-12-07T14:05:00+01:00), or an age before now (90s, 30m, 2h, 7d)."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        if age := re.fullmatch(r"(\d{1,9})([smhd])", text):
            return datetime.now(UTC) - timedelta(seconds=int(age[1]) * AGE_UNITS[age[2]])
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            self.fail(
                f"{text[:40]!r} is not a time: give YYYY-MM-DD[THH:MM[:SS]] (UTC unless an offset follows)"
                " or an age such as 30m, 2h, 7d",
                param,
                ctx,
            )
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


MOMENT = Moment()


def say(text: str, err: bool = False, nl: bool = True) -> None:
    """Print a command's output with no control character but its layout's
    (tasks/ops/terminal.py): every command prints through this."""
    click.echo(printable(text), err=err, nl=nl)


def refused(exc: Exception) -> Failure:
    """A refusal of the command's own (no key, wrong mode, a bad token): exit 2."""
    return Failure(f"refused: {exc}", Exit.USAGE)


def key_ring() -> Any:
    """The configured masking key ring, or a refusal (none, or the development key
    outside its stack)."""
    from tasks.pipeline.keys import MaskingKeyError
    from tasks.pipeline.service import load_key_ring_checked

    try:
        return load_key_ring_checked()
    except MaskingKeyError as exc:
        raise refused(exc) from exc
