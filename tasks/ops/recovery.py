"""Recovery of masked values, and re-tokenising rows to the newest key.

`unmask` works in ``siv`` mode only, with the key. It names tokens, or filter options
(user id, date range), and the database function recover_tokens() (init.sql, SECURITY
DEFINER) picks the tokens itself: those of user_logins that the filter selects, or the
given tokens if every one of them is in user_logins. It writes one audit row per token
(the time and the database user set by the database, the filter, the reason) and
returns exactly those tokens; `unmask` decrypts those and nothing else, in the same
transaction, and commits the audit before it shows a value (a token that fails to
decrypt rolls it back). So the audit describes only what was handed out, and the
recovery role has no other way to write it, nor to read, change or delete it. A reason
needs visible text, here and in the database. (Whoever holds the siv key can decrypt
tokens without this command, and so without an audit: the key is the control; the
audit records its use through here.) `rekey`
re-tokenises user_logins in small batches, each its own short transaction, so it holds
no long lock and can be stopped and run again; it needs ``siv`` (an HMAC token cannot
be re-keyed without the raw value).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import date

import psycopg2.errors
import psycopg2.extras

from tasks.pipeline import store
from tasks.pipeline.masking import Masker, TokenError, parse_token


class RecoveryRefused(RuntimeError):
    """Recovery is not possible or not allowed here."""


@dataclass(frozen=True)
class TokenFilter:
    """Which rows' tokens to recover; at least one condition is required."""

    user_id: str | None = None
    since: date | None = None
    until: date | None = None


def check_mode(masker: Masker) -> None:
    if masker.mode != "siv":
        raise RecoveryRefused("values masked in hmac mode are one-way; recovery needs MASKING_MODE=siv")


def has_visible_text(reason: str) -> bool:
    """Whether a reason holds a letter, digit, punctuation mark or symbol (not only white
    space, control, format or combining characters such as a zero-width space)."""
    return any(unicodedata.category(char)[0] in "LNPS" for char in reason)


def unmask(
    conn: store.Connection,
    masker: Masker,
    field: str,
    reason: str,
    where: TokenFilter | None = None,
    tokens: list[str] | None = None,
) -> list[tuple[str, str]]:
    """(token, original value) for the tokens that recover_tokens() picks and audits."""
    check_mode(masker)
    if not has_visible_text(reason):
        raise RecoveryRefused("a reason with visible text is required for every recovery")
    where = where or TokenFilter()
    try:
        with conn, conn.cursor() as cur:  # commits the audit only if every token decrypts
            cur.execute(
                "SELECT token FROM public.recover_tokens(%s, %s, %s, %s, %s, %s) AS token",
                (field, reason, where.user_id, where.since, where.until, tokens or None),
            )
            chosen = [row[0] for row in cur.fetchall()]
            return [(token, masker.unmask(field, token)) for token in chosen]
    except psycopg2.errors.InvalidParameterValue as exc:
        raise RecoveryRefused(exc.diag.message_primary or "recovery refused by the database") from None


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
