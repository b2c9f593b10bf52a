"""Recovery of masked values, and re-tokenising rows to the newest key.

`unmask` works in ``siv`` mode only, with the key. It takes tokens, or picks them by
filter options (user id, date range) with one fixed, parameterised query: no free
SQL. Every value is audited before it is shown, through the database function
record_unmask(), which sets the time and the database user itself; the recovery role
has no other way to write the audit and cannot read, change or delete it. (Whoever holds
the siv key can decrypt tokens without this command, and so without an audit: the key is
the control; the audit records its use through here.) `rekey`
re-tokenises user_logins in small batches, each its own short transaction, so it holds
no long lock and can be stopped and run again; it needs ``siv`` (an HMAC token cannot
be re-keyed without the raw value).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import psycopg2.extras

from tasks.pipeline import store
from tasks.pipeline.masking import FIELDS, Masker, TokenError, parse_token

COLUMNS = {"ip": "masked_ip", "device_id": "masked_device_id"}
assert set(COLUMNS) == set(FIELDS)


class RecoveryRefused(RuntimeError):
    """Recovery is not possible or not allowed here."""


@dataclass(frozen=True)
class TokenFilter:
    """Which rows' tokens to recover; at least one condition is required."""

    user_id: str | None = None
    since: date | None = None
    until: date | None = None

    def __str__(self) -> str:
        parts = [f"{name}={value}" for name, value in vars(self).items() if value is not None]
        return " ".join(parts)


def check_mode(masker: Masker) -> None:
    if masker.mode != "siv":
        raise RecoveryRefused("values masked in hmac mode are one-way; recovery needs MASKING_MODE=siv")


def tokens_matching(conn: store.Connection, field: str, where: TokenFilter) -> list[str]:
    """The distinct tokens of `field` in the rows the filter selects (read-only)."""
    if where.user_id is None and where.since is None and where.until is None:
        raise RecoveryRefused("give tokens, or at least one of --user-id, --since, --until")
    column = COLUMNS[field]  # a fixed name from a closed set, never user input
    with conn.cursor() as cur:
        cur.execute("SET TRANSACTION READ ONLY")
        cur.execute(
            f"SELECT DISTINCT {column} FROM user_logins WHERE {column} IS NOT NULL"
            " AND (%(user)s::text IS NULL OR user_id = %(user)s)"
            " AND (%(since)s::date IS NULL OR create_date >= %(since)s)"
            " AND (%(until)s::date IS NULL OR create_date <= %(until)s)",
            {"user": where.user_id, "since": where.since, "until": where.until},
        )
        tokens = [row[0] for row in cur.fetchall()]
    conn.rollback()
    return tokens


def unmask(
    conn: store.Connection, masker: Masker, field: str, tokens: list[str], reason: str, where: str = ""
) -> list[str]:
    """The original (normalised) values of tokens, each audited first."""
    check_mode(masker)
    if not reason.strip():
        raise RecoveryRefused("a reason is required for every recovery")
    values = [masker.unmask(field, token) for token in tokens]  # TokenError before any audit
    with conn, conn.cursor() as cur:
        cur.execute("SELECT public.record_unmask(%s, %s, %s, %s)", (field, tokens, reason, where or "tokens given"))
    return values


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
