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
be re-keyed without the raw value). It selects only siv tokens not written with the
newest key, and writes each of them anew, so every row it selects leaves the selection
and it ends whatever mix of modes and versions the table holds; hmac tokens (rows
masked while MASKING_MODE was hmac) stay as they are, and `one_way_rows` counts them.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

import psycopg2.errors
import psycopg2.extras

from tasks.pipeline import store
from tasks.pipeline.masking import Masker, TokenError


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


def _retoken(masker: Masker, field: str, token: str | None, current: str) -> str | None:
    """The token written with the newest key; an hmac token (one-way) and a token that
    already starts with `current` are kept. Exactly the tokens that `rekey` selects change."""
    if token is None or not token.startswith("s") or token.startswith(current):
        return token
    return masker.token(field, masker.unmask(field, token))


def rekey(conn: store.Connection, masker: Masker, batch: int = 1000) -> int:
    """Re-tokenise every siv token not made with the newest key; returns rows changed."""
    if masker.mode != "siv":
        raise RecoveryRefused("rekey needs MASKING_MODE=siv: an HMAC token cannot be re-keyed without its value")
    current = f"s{masker.keys.current_version}:"
    return retokenise(
        conn,
        "(masked_ip LIKE 's%%' AND masked_ip NOT LIKE %(current)s)"
        " OR (masked_device_id LIKE 's%%' AND masked_device_id NOT LIKE %(current)s)",
        {"current": current + "%"},
        lambda field, token: _retoken(masker, field, token, current),
        batch,
    )


def retokenise(
    conn: store.Connection,
    where: str,
    params: dict[str, object],
    retoken: Callable[[str, str | None], str | None],
    batch: int,
) -> int:
    """Rewrite the tokens of the rows `where` selects with `retoken(field, token)`, `batch`
    rows per short transaction (locked rows skipped), until it selects none; returns rows
    changed. `retoken` must take every selected row out of the selection."""
    changed = 0
    while True:
        with conn, conn.cursor() as cur:
            cur.execute(
                f"SELECT ctid::text, masked_ip, masked_device_id FROM user_logins WHERE {where}"
                " LIMIT %(batch)s FOR UPDATE SKIP LOCKED",
                {**params, "batch": batch},
            )
            rows = cur.fetchall()
            if not rows:
                return changed
            try:
                updates = [(ctid, retoken("ip", ip), retoken("device_id", dev)) for ctid, ip, dev in rows]
            except TokenError as exc:
                raise RecoveryRefused(f"a row cannot be re-keyed: {exc}") from None
            psycopg2.extras.execute_values(
                cur,
                "UPDATE user_logins AS u SET masked_ip = v.ip, masked_device_id = v.dev"
                " FROM (VALUES %s) AS v(ctid, ip, dev) WHERE u.ctid = v.ctid::tid",
                updates,
            )
            changed += len(rows)


def one_way_rows(conn: store.Connection) -> int:
    """Rows that hold an hmac token, which no key re-tokenises (the raw value is gone)."""
    with conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM user_logins WHERE masked_ip LIKE 'h%' OR masked_device_id LIKE 'h%'")
        (count,) = cur.fetchone() or (0,)
        return int(count)
