"""Forgotten users, as the pipeline sees them: the keyed hash that names a user in the
tombstones and the erasure audit, and which events of a batch belong to a user forgotten
after they were sent.

A user id is never stored for an erasure: only `subject_hash`, 'version:hex', an HMAC of
the id under a key derived (HKDF, its own purpose) from the masking key ring's newest
version. A tombstone is matched under every version the ring holds, so rotation keeps
old tombstones working. An event is dropped if its user has a tombstone whose erasure
came after the event was sent (its SentTimestamp, the original one for a redriven
event); a login sent after the erasure is new data and is processed.

`forget` takes ERASURE_LOCK exclusively to write its tombstones, and a batch takes it
shared, in the transaction that writes the batch, before it reads them: so a batch in
flight when a user is forgotten commits before `forget` deletes that user's rows, and
every later batch sees the tombstone.
"""

from __future__ import annotations

import hmac
import json
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

from tasks.pipeline.keys import KeyRing
from tasks.pipeline.records import NFC_SHRINK, TEXT_LIMITS
from tasks.pipeline.store import Cursor

PURPOSE = "erasure/user-id"
# The longest user id that NFC could bring within user_logins.user_id (records.py's rule).
MAX_USER_ID = TEXT_LIMITS["user_id"] * NFC_SHRINK
# pg_advisory_xact_lock's key (a bigint): the tombstones' writers against the batches.
ERASURE_LOCK = 0x4C50_4552_4153_45  # "LPERASE"


def normalised(user_id: str) -> str:
    """A user id as user_logins stores it (NFC, as tasks.pipeline.records reads it)."""
    return unicodedata.normalize("NFC", user_id)


def _hashers(keys: KeyRing) -> tuple[tuple[int, bytes], ...]:
    return tuple((version, keys.derive(version, PURPOSE)) for version in sorted(keys.keys))


def _digest(version: int, key: bytes, user_id: str) -> str:
    mac = hmac.digest(key, normalised(user_id).encode("utf-8", "surrogatepass"), "sha256")  # one-shot: C speed
    return f"{version}:{mac.hex()}"


def subject_hash(keys: KeyRing, user_id: str) -> str:
    """The keyed hash that names a user in the tombstones and the audit (newest key)."""
    version = keys.current_version
    return _digest(version, keys.derive(version, PURPOSE), user_id)


def subject_hashes(keys: KeyRing, user_ids: Iterable[str]) -> dict[str, str]:
    """hash -> user id, for each user under every key version of the ring."""
    hashers = _hashers(keys)
    return {hashed: user for user in set(user_ids) for hashed in _user_hashes(user, hashers)}


@lru_cache(maxsize=65_536)  # users come back: a batch's hashes are mostly looked up, not computed
def _user_hashes(user_id: str, hashers: tuple[tuple[int, bytes], ...]) -> tuple[str, ...]:
    return tuple(_digest(v, key, user_id) for v, key in hashers)


def erased_at(cur: Cursor, keys: KeyRing, user_ids: Iterable[str]) -> dict[str, int]:
    """user id -> the latest erasure of that user (epoch milliseconds), for those forgotten.
    Takes ERASURE_LOCK shared until the transaction ends (see the module's docstring)."""
    by_hash = subject_hashes(keys, user_ids)
    if not by_hash:
        return {}
    cur.execute(
        "SELECT pg_advisory_xact_lock_shared(%s);"  # a statement of its own: the next one sees what it waited for
        " SELECT subject_hash, floor(extract(epoch FROM erased_at) * 1000)::bigint"
        " FROM erasure_tombstones WHERE subject_hash = ANY(%s)",
        (ERASURE_LOCK, list(by_hash)),
    )
    erased: dict[str, int] = {}
    for hashed, at_ms in cur.fetchall():
        user = by_hash[hashed]
        erased[user] = max(erased.get(user, 0), int(at_ms))
    return erased


def user_of(body: object) -> str | None:
    """The user id of an event body, read leniently (None when there is none to read)."""
    if not isinstance(body, str):
        return None
    try:
        record = json.loads(body)
    except (ValueError, RecursionError):
        return None
    user = record.get("user_id") if isinstance(record, dict) else None
    if not (isinstance(user, str) and 0 < len(user) <= MAX_USER_ID):
        return None  # no row has it; and NFC of a long run of combining marks costs seconds of CPU
    return normalised(user)


def is_forgotten(user_id: str | None, sent_at_ms: int, erased: dict[str, int]) -> bool:
    """Whether an event of this user, sent then, was sent before the user's erasure."""
    return user_id is not None and user_id in erased and sent_at_ms < erased[user_id]
