"""Recovery of masked values, and re-tokenising rows to the newest key.

`unmask` works in ``siv`` mode only, with the key: every value it recovers is first
written to unmask_audit (who, when, which token, the stated reason) in the same
transaction, so no value is shown without its audit row. `rekey` re-tokenises
user_logins in small batches, each its own short transaction, so it holds no long lock
and can be stopped and run again; it needs ``siv`` (an HMAC token cannot be re-keyed
without the raw value).
"""

from __future__ import annotations

import getpass
from collections.abc import Iterable

import psycopg2.extras

from tasks.pipeline import store
from tasks.pipeline.masking import Masker, TokenError, parse_token

FIELDS = {"ip": "masked_ip", "device_id": "masked_device_id"}


class RecoveryRefused(RuntimeError):
    """Recovery is not possible or not allowed here."""


def unmask(conn: store.Connection, masker: Masker, field: str, tokens: Iterable[str], reason: str) -> list[str]:
    """The original (normalised) values of tokens, each audited."""
    if masker.mode != "siv":
        raise RecoveryRefused("values masked in hmac mode are one-way; recovery needs MASKING_MODE=siv")
    if not reason.strip():
        raise RecoveryRefused("a reason is required for every recovery")
    tokens = list(tokens)
    values = [masker.unmask(field, token) for token in tokens]  # TokenError before any audit
    with conn, conn.cursor() as cur:
        psycopg2.extras.execute_values(
            cur,
            "INSERT INTO unmask_audit (os_user, field, token, reason) VALUES %s",
            [(getpass.getuser(), field, token, reason) for token in tokens],
        )
    return values


def tokens_from_query(conn: store.Connection, query: str) -> list[str]:
    """The first column of a read-only query's result."""
    with conn.cursor() as cur:
        cur.execute("SET TRANSACTION READ ONLY")
        cur.execute(query)
        tokens = [row[0] for row in cur.fetchall() if row[0] is not None]
    conn.rollback()
    return tokens


def _retoken(masker: Masker, field: str, token: str | None) -> str | None:
    if token is None or parse_token(token)[0] == masker.keys.current_version:
        return token
    return masker.token(field, masker.unmask(field, token))


def rekey(conn: store.Connection, masker: Masker, batch: int = 1000) -> int:
    """Re-tokenise every row not at the newest key version; returns rows changed."""
    if masker.mode != "siv":
        raise RecoveryRefused("rekey needs MASKING_MODE=siv: an HMAC token cannot be re-keyed without its value")
    current = f"s{masker.keys.current_version}:%"
    changed = 0
    while True:
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT ctid::text, masked_ip, masked_device_id FROM user_logins"
                " WHERE masked_ip NOT LIKE %s OR masked_device_id NOT LIKE %s"
                " LIMIT %s FOR UPDATE SKIP LOCKED",
                (current, current, batch),
            )
            rows = cur.fetchall()
            if not rows:
                return changed
            try:
                updates = [
                    (ctid, _retoken(masker, "ip", ip), _retoken(masker, "device_id", dev)) for ctid, ip, dev in rows
                ]
            except TokenError as exc:
                raise RecoveryRefused(f"a row cannot be re-keyed: {exc}") from None
            psycopg2.extras.execute_values(
                cur,
                "UPDATE user_logins AS u SET masked_ip = v.ip, masked_device_id = v.dev"
                " FROM (VALUES %s) AS v(ctid, ip, dev) WHERE u.ctid = v.ctid::tid",
                updates,
            )
            changed += len(rows)
