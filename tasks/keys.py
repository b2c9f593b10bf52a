"""Masking keys: where they come from, their versions, and the development key.

A key ring maps a key version (a positive integer) to 32 random bytes; the newest
version masks, older ones stay for `unmask` and `rekey`. Keys come from MASKING_KEYS
("1:<base64>,2:<base64>") or from MASKING_KEYS_FILE (one "version:base64" a line, as
a Docker or Kubernetes secret mounts it). Key bytes are never logged or put in a
task's arguments.
"""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

KEY_BYTES = 32
DEVELOPMENT_MARK = "# development key"


class MaskingKeyError(RuntimeError):
    """No usable masking key."""


@dataclass(frozen=True)
class KeyRing:
    keys: dict[int, bytes]
    development: bool = False

    @property
    def current_version(self) -> int:
        return max(self.keys)

    def key(self, version: int) -> bytes:
        try:
            return self.keys[version]
        except KeyError:
            raise MaskingKeyError(f"masking key version {version} is not loaded") from None

    def __repr__(self) -> str:  # never show key bytes
        return f"KeyRing(versions={sorted(self.keys)}, development={self.development})"


def parse_key_ring(text: str) -> KeyRing:
    """Read "version:base64" entries, separated by commas or new lines."""
    keys: dict[int, bytes] = {}
    lines = [line.strip() for line in text.splitlines() if not line.strip().startswith("#")]
    for entry in (e.strip() for line in lines for e in line.split(",")):
        if not entry:
            continue
        version, _, encoded = entry.partition(":")
        key = base64.b64decode(encoded.strip(), validate=True)
        if not version.strip().isdigit() or len(key) < KEY_BYTES:
            raise MaskingKeyError(f"a masking key entry is not 'version:base64' of {KEY_BYTES}+ bytes")
        keys[int(version)] = key
    if not keys:
        raise MaskingKeyError("no masking key is configured (MASKING_KEYS or MASKING_KEYS_FILE)")
    return KeyRing(keys, development=DEVELOPMENT_MARK in text)


def load_key_ring(inline: str, path: str) -> KeyRing:
    """The key ring from the inline setting, else from the key file."""
    if inline:
        return parse_key_ring(inline)
    if path and Path(path).exists():
        return parse_key_ring(Path(path).read_text())
    raise MaskingKeyError("no masking key is configured (MASKING_KEYS or MASKING_KEYS_FILE)")


def new_key_line(version: int) -> str:
    return f"{version}:{base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}"


def create_development_key(path: Path) -> bool:
    """Write a fresh development key ring to `path` unless one is there."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{DEVELOPMENT_MARK}: made by the embedded stack, for local use only\n")
        f.write(new_key_line(1) + "\n")
    return True
