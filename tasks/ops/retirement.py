"""`rekey --retire VERSION`: retire one masking key version, and show nothing needs it.

1. In ``siv`` mode, the rows whose tokens are of that version are re-masked to the newest
   version, in short batches (each its own transaction, locked rows skipped and left for
   the check below). AES-SIV is deterministic, so equal values keep equal tokens:
   duplicates stay visible across the re-masking. An ``hmac`` token cannot be
   re-computed without its raw value: such rows keep the version until they go
   (retention, `forget`), and retiring is refused until then.
2. It refuses while anything still needs the version: a row holding a token of it; a
   dead letter in login-queue-dlq whose original id is signed with it (read in one
   bounded pass, made visible again after; one in flight cannot be checked, so that
   refuses too); any message in login-queue (a redriven message there may carry such a
   signature, and reading login-queue would take messages from the fetch: retire when
   it is empty); a tombstone hashed with it younger than the longest queue retention
   (an event of that user may still be on its way). Older tombstones of that version
   are deleted: nothing they guard can still arrive.
3. It removes the version from the key file it reads (MASKING_KEYS_FILE), rewritten
   atomically, and says where else the key must be destroyed: the Kubernetes secret, the
   environment (MASKING_KEYS), and every copy or backup of the file.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import celeryconfig as config
from tasks.broker import aws
from tasks.ops.erasure import ErasureReport, sweep
from tasks.ops.recovery import RecoveryRefused, retokenise
from tasks.pipeline import store
from tasks.pipeline.keys import parse_key_ring
from tasks.pipeline.masking import Masker
from tasks.pipeline.source import ORIGINAL_SIGNATURE

MAX_QUEUE_DAYS = 14  # SQS's longest retention: no queued event is older
ELSEWHERE = (
    "the Kubernetes secret login-pipeline-worker (key `keys`), MASKING_KEYS wherever it is set"
    " (workers, beat, Flower, operators' shells, CI), and every copy or backup of the key file"
)


@dataclass
class Retirement:
    version: int
    remasked: int = 0
    tombstones_dropped: int = 0
    removed_from: str | None = None
    not_removed: str | None = None

    def lines(self) -> list[str]:
        lines = [
            f"retired key version {self.version}: re-masked {self.remasked} rows; no row, queued message"
            f" or recent tombstone needs it ({self.tombstones_dropped} tombstones older than"
            f" {MAX_QUEUE_DAYS} days dropped)"
        ]
        if self.removed_from:
            lines.append(f"removed version {self.version} from {self.removed_from}")
        if self.not_removed:
            lines.append(f"not removed: {self.not_removed}")
        lines.append(f"destroy it also in: {ELSEWHERE}")
        return lines


def retire(conn: store.Connection, masker: Masker, version: int, batch: int = 1000) -> Retirement:
    """Retire `version` (the module's docstring); RecoveryRefused with the reason if it cannot be."""
    keys = masker.keys
    if version not in keys.keys:
        raise RecoveryRefused(f"key version {version} is not in the key ring")
    if version == keys.current_version:
        raise RecoveryRefused(
            f"key version {version} is the newest, which masks: add a newer one and roll it out first"
        )
    done = Retirement(version)
    if masker.mode == "siv":
        done.remasked = remask(conn, masker, version, batch)
    refuse_while_needed(conn, masker, version)
    done.tombstones_dropped = drop_old_tombstones(conn, version)
    done.removed_from, done.not_removed = remove_from_key_file(version)
    return done


def _token_pattern(letter: str, version: int) -> str:
    return f"{letter}{version}:%"


def _remasked(masker: Masker, field: str, token: str | None, version: int) -> str | None:
    if token is None or not token.startswith(f"s{version}:"):
        return token
    return masker.token(field, masker.unmask(field, token))


def remask(conn: store.Connection, masker: Masker, version: int, batch: int) -> int:
    """Re-mask the siv tokens of `version` to the newest version; returns rows changed."""
    return retokenise(
        conn,
        "masked_ip LIKE %(old)s OR masked_device_id LIKE %(old)s",
        {"old": _token_pattern("s", version)},
        lambda field, token: _remasked(masker, field, token, version),
        batch,
    )


def refuse_while_needed(conn: store.Connection, masker: Masker, version: int) -> None:
    rows = rows_needing(conn, version)
    if rows:
        why = "" if masker.mode == "siv" else " (hmac tokens cannot be re-computed without the raw values)"
        raise RecoveryRefused(f"{rows} rows still hold tokens of key version {version}{why}: not retired")
    waiting = aws.queue_depth(config.SOURCE_QUEUE)
    if waiting["visible"] or waiting["in_flight"]:
        raise RecoveryRefused(
            f"{config.SOURCE_QUEUE} is not empty (a redriven message there may be signed with version {version}):"
            " retire once it is drained"
        )
    signed, unreached = dead_letters_signed_with(version)
    if signed or unreached:
        raise RecoveryRefused(
            f"{signed} dead letters in {config.DEAD_LETTER_QUEUE} are signed with key version {version}"
            f" and {unreached} could not be checked (in flight): redrive them first, or wait"
        )
    young = young_tombstones(conn, version)
    if young:
        raise RecoveryRefused(
            f"{young} tombstones of key version {version} are younger than {MAX_QUEUE_DAYS} days"
            " (their users' events may still arrive): retire after that"
        )


def rows_needing(conn: store.Connection, version: int) -> int:
    siv, hmac = _token_pattern("s", version), _token_pattern("h", version)
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM user_logins WHERE masked_ip LIKE ANY(%s) OR masked_device_id LIKE ANY(%s)",
            ([siv, hmac], [siv, hmac]),
        )
        return int(store.one_row(cur)[0])


def dead_letters_signed_with(version: int) -> tuple[int, int]:
    """(dead letters whose original id is signed with `version`, those the pass could not read)."""
    signed = 0
    report = ErasureReport()

    def count(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        nonlocal signed
        signed += sum((aws.message_attribute(m, ORIGINAL_SIGNATURE) or "").startswith(f"{version}:") for m in messages)
        return []  # nothing is deleted

    sweep(aws.client("sqs"), config.DEAD_LETTER_QUEUE, count, report, limit=100_000)
    return signed, report.unreached.total()


def _tombstones_of(version: int) -> str:
    return f"{version}:%"


def young_tombstones(conn: store.Connection, version: int) -> int:
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM erasure_tombstones WHERE subject_hash LIKE %s"
            " AND erased_at > now() - make_interval(days => %s)",
            (_tombstones_of(version), MAX_QUEUE_DAYS),
        )
        return int(store.one_row(cur)[0])


def drop_old_tombstones(conn: store.Connection, version: int) -> int:
    with conn, conn.cursor() as cur:
        cur.execute(
            "DELETE FROM erasure_tombstones WHERE subject_hash LIKE %s"
            " AND erased_at <= now() - make_interval(days => %s)",
            (_tombstones_of(version), MAX_QUEUE_DAYS),
        )
        return cur.rowcount


def remove_from_key_file(version: int) -> tuple[str | None, str | None]:
    """(the file the version was removed from, or why it was not)."""
    if config.MASKING_KEYS:
        return None, f"the keys come from MASKING_KEYS: remove version {version} there"
    path = Path(config.MASKING_KEYS_FILE)
    lines = path.read_text().splitlines()
    kept = [line for line in lines if not _is_version(line, version)]
    parse_key_ring("\n".join(kept))  # what remains is a ring, or this raises before writing
    try:
        _replace(path, "".join(f"{line}\n" for line in kept))
    except OSError as exc:
        return None, f"{path} cannot be rewritten ({exc.strerror}): remove version {version} from it"
    return str(path), None


def _is_version(line: str, version: int) -> bool:
    head = line.strip().partition(":")[0].strip()
    return head.isdigit() and int(head) == version


def _replace(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, with the file's own mode."""
    mode = path.stat().st_mode & 0o777
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
