"""What the operator's and the developer's commands share: option types and the checks
that refuse a command before it starts its work (exit 2)."""

from __future__ import annotations

from typing import Any

import click

from tasks.ops.failures import Exit, Failure

SECONDS = click.FloatRange(min=0, min_open=True)


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
