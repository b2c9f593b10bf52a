"""Masking keys: where they come from, their versions, and the development key.

A key ring maps a key version (a positive integer) to 32 or more random bytes; the
newest version masks, older ones stay for `unmask` and `rekey`. Keys come from
MASKING_KEYS ("1:<base64>,2:<base64>") or from MASKING_KEYS_FILE (one "version:base64"
a line, as a Docker or Kubernetes secret mounts it). A ring that names a version twice
is refused. Key bytes are never logged or put in a task's arguments.

The development key that `dev stack up` makes is known by its bytes (they begin with
DEVELOPMENT_PREFIX), wherever it is copied, and the stack keeps its fingerprint beside
itself (STACK_DIR/development-key.sha256). Everything that masks or unmasks refuses a
development key unless (``refuse_development_key``) that file, in the configured
STACK_DIR, names this very key, SQS is reached on the loopback (the embedded LocalStack
listens there only) and the database is the stack's own (DATABASE_URL unset or equal to
STACK_DIR/database.url) on this machine (a unix socket or the loopback). A fingerprint
copied into another folder is not enough: real SQS or a database elsewhere is refused
whatever the folder holds. What this does not prevent is in docs/privacy.md.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2.extensions
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
DEVELOPMENT_PREFIX = b"login-pipeline-dev-key:"
FINGERPRINT_FILE = "development-key.sha256"
# What `sign` makes: a key version of at most nine digits, a colon, 64 lowercase hex digits.
SIGNATURE_FORMAT = re.compile(r"[1-9][0-9]{0,8}:[0-9a-f]{64}")


class MaskingKeyError(RuntimeError):
    """No usable masking key."""


@dataclass(frozen=True)
class KeyRing:
    keys: dict[int, bytes]

    @property
    def current_version(self) -> int:
        return max(self.keys)

    @property
    def development(self) -> bool:
        return any(key.startswith(DEVELOPMENT_PREFIX) for key in self.keys.values())

    def fingerprint(self) -> str:
        return hashlib.sha256(b"".join(self.keys[v] for v in sorted(self.keys))).hexdigest()

    def derive(self, version: int, purpose: str, length: int = 32) -> bytes:
        """A key of its own for one purpose, derived from one version of the ring (HKDF)."""
        hkdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=f"login-pipeline/{purpose}".encode())
        return hkdf.derive(self.key(version))

    def sign(self, text: str, purpose: str) -> str:
        """'version:hex' HMAC of `text` under the newest key's `purpose` key."""
        version = self.current_version
        return f"{version}:{self._mac(version, text, purpose)}"

    def verify(self, text: str, signature: object, purpose: str) -> bool:
        """Whether `signature` is `sign(text, purpose)` under any loaded key version.
        Anything not in sign's format (SIGNATURE_FORMAT) is simply false, never an error."""
        if not (isinstance(signature, str) and SIGNATURE_FORMAT.fullmatch(signature)):
            return False
        version, _, mac = signature.partition(":")
        if int(version) not in self.keys:
            return False
        return hmac.compare_digest(self._mac(int(version), text, purpose).encode(), mac.encode())

    def _mac(self, version: int, text: str, purpose: str) -> str:
        # surrogatepass: a lone surrogate (which no UTF-8 codec takes) is signed, not an error
        data = text.encode("utf-8", "surrogatepass")
        return hmac.new(self.derive(version, purpose), data, hashlib.sha256).hexdigest()

    def key(self, version: int) -> bytes:
        try:
            return self.keys[version]
        except KeyError:
            raise MaskingKeyError(f"masking key version {version} is not loaded") from None

    def __repr__(self) -> str:  # never show key bytes
        return f"KeyRing(versions={sorted(self.keys)}, development={self.development})"


def _entry(entry: str) -> tuple[int, bytes]:
    version, _, encoded = entry.partition(":")
    try:
        key = base64.b64decode(encoded.strip(), validate=True)
    except ValueError:
        key = b""
    version = version.strip()
    if not (version.isascii() and version.isdigit()) or int(version) < 1 or len(key) < KEY_BYTES:
        raise MaskingKeyError(f"a masking key entry is not 'version:base64' of {KEY_BYTES}+ bytes")
    return int(version), key


def parse_key_ring(text: str) -> KeyRing:
    """Read "version:base64" entries, separated by commas or new lines ('#' comments)."""
    keys: dict[int, bytes] = {}
    lines = [line.strip() for line in text.splitlines() if not line.strip().startswith("#")]
    for entry in (e.strip() for line in lines for e in line.split(",")):
        if not entry:
            continue
        version, key = _entry(entry)
        if version in keys:
            raise MaskingKeyError(f"the masking key ring names version {version} twice")
        keys[version] = key
    if not keys:
        raise MaskingKeyError("no masking key is configured (MASKING_KEYS or MASKING_KEYS_FILE)")
    return KeyRing(keys)


def load_key_ring(inline: str, path: str) -> KeyRing:
    """The key ring from the inline setting, else from the key file."""
    if inline:
        return parse_key_ring(inline)
    if path and Path(path).exists():
        return parse_key_ring(Path(path).read_text())
    raise MaskingKeyError("no masking key is configured (MASKING_KEYS or MASKING_KEYS_FILE)")


@dataclass(frozen=True)
class Surroundings:
    """Where a key ring is used: STACK_DIR, SQS_ENDPOINT_URL ("" for real AWS),
    DATABASE_URL as configured ("" for the stack's own) and the stack's database.url."""

    stack_dir: Path
    sqs_endpoint: str
    database_url: str
    stack_database_file: Path


def refuse_development_key(keys: KeyRing, where: Surroundings) -> None:
    """MaskingKeyError for a development key outside the embedded stack that made it."""
    if not keys.development:
        return
    why = _outside_the_stack(keys, where)
    if why:
        raise MaskingKeyError(
            f"the development key may only mask inside the embedded stack that made it ({why});"
            " configure a key of your own"
        )


def _outside_the_stack(keys: KeyRing, where: Surroundings) -> str | None:
    marker = where.stack_dir / FINGERPRINT_FILE
    if not (marker.exists() and marker.read_text().strip() == keys.fingerprint()):
        return "STACK_DIR does not hold its fingerprint"
    if not (where.sqs_endpoint and _is_loopback(urlsplit(where.sqs_endpoint).hostname or "")):
        return "SQS_ENDPOINT_URL is not a LocalStack on the loopback"
    own = where.stack_database_file.read_text().strip() if where.stack_database_file.exists() else ""
    if where.database_url and where.database_url != own:
        return "DATABASE_URL is not the stack's own database"
    if own and not _on_this_machine(own):
        return "the stack's database.url names a server on another machine"
    return None


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _on_this_machine(database_url: str) -> bool:
    """Whether every host a PostgreSQL URL names is a unix socket or the loopback."""
    try:
        dsn = psycopg2.extensions.parse_dsn(database_url)
    except psycopg2.ProgrammingError:
        return False
    hosts = [h for h in (dsn.get("hostaddr", "") + "," + dsn.get("host", "")).split(",") if h]
    return all(host.startswith("/") or _is_loopback(host) for host in hosts)


def new_key_line(version: int, prefix: bytes = b"") -> str:
    key = prefix + secrets.token_bytes(KEY_BYTES)
    return f"{version}:{base64.b64encode(key).decode()}"


def create_development_key(path: Path, stack_dir: Path) -> bool:
    """Write a fresh development key ring to `path` unless one is there, and mark it
    as this stack's by its fingerprint in `stack_dir`."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    line = new_key_line(1, DEVELOPMENT_PREFIX)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# development key: made by the embedded stack, for this machine only\n" + line + "\n")
    stack_dir.mkdir(parents=True, exist_ok=True)
    (stack_dir / FINGERPRINT_FILE).write_text(parse_key_ring(line).fingerprint() + "\n")
    return True
