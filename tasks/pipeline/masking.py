"""Pseudonymisation of ip and device_id: normalise, then a keyed, versioned token.

Two modes (MASKING_MODE):
- ``hmac``: HMAC-SHA256, one-way. Token ``h<version>:<base64url of 32 bytes>``.
- ``siv``: AES-SIV, deterministic authenticated encryption; the key holder can
  decrypt. Token ``s<version>:<base64url of tag + ciphertext>``. The value is padded
  to a multiple of SIV_BLOCK bytes first (ISO/IEC 7816-4: 0x80, then zeros), so a
  token does not tell a short address from a long one.

Both are deterministic (same value, same key: same token), so an analyst still sees
which values repeat, and neither can be reversed by hashing every IPv4 address
without the key. Each field has its own key derived from the key-ring entry
(HKDF with the field name as context), so an ip token never equals the device_id
token of the same text, and a token of one field cannot be decrypted as the other.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from functools import cached_property

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from tasks.pipeline.keys import KeyRing

MODES = {"hmac": "h", "siv": "s"}
# The longest normalised value a token is made of: padded, it still fits varchar(256).
MAX_VALUE_BYTES = 127
FIELDS = ("ip", "device_id")
SIV_BLOCK = 64
_DOTTED_QUAD = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})")


class TokenError(ValueError):
    """A token that this key ring cannot read."""


class ValueTooLong(ValueError):
    """A value longer than MAX_VALUE_BYTES once normalised (NFKC can expand text)."""


def normalise_ip(value: str) -> tuple[str, bool]:
    """The canonical text of an address, and whether it was one.

    Handles surrounding spaces, IPv4 with leading zeros ("010.001.002.003"),
    IPv4-mapped IPv6 ("::ffff:10.1.2.3") and IPv6 case and zero compression. Digits
    are ASCII only: full-width digits or a superscript ("7\u00b2") make no address. An IPv6 zone id
    ("fe80::1%eth0") names an interface on the sender's host, not the address: it is
    dropped, in the plain and in the IPv4-mapped form alike. Multicast, reserved and
    loopback addresses are addresses like any other. A value that is no address comes
    back stripped, with False.
    """
    text = value.strip()
    if quad := _DOTTED_QUAD.fullmatch(text):
        octets = [int(part) for part in quad.groups()]
        text = ".".join(map(str, octets))
        if max(octets) <= 255:  # an IPv4 address, and this is its canonical text
            return text, True
    if not text.isascii():
        return text, False
    try:
        address = ipaddress.ip_address(text.partition("%")[0] if ":" in text else text)
    except ValueError:
        return text, False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.compressed, True


def normalise_device_id(value: str) -> str:
    """NFKC (full-width digits are ASCII digits), spaces stripped; case is kept, since a
    device id scheme may tell "aB" from "ab" and folding would merge two devices."""
    return unicodedata.normalize("NFKC", value).strip()


def pad(data: bytes, block: int = SIV_BLOCK) -> bytes:
    """0x80, then zeros up to a multiple of `block` bytes."""
    data += b"\x80"
    return data + b"\x00" * (-len(data) % block)


def unpad(data: bytes) -> bytes:
    stripped = data.rstrip(b"\x00")
    if not stripped.endswith(b"\x80"):
        raise TokenError("token padding is not valid")
    return stripped[:-1]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Masker:
    """Masks and unmasks field values with one key ring in one mode."""

    keys: KeyRing
    mode: str = "hmac"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"MASKING_MODE must be one of {sorted(MODES)}")

    def _field_key(self, version: int, field: str, purpose: str, length: int) -> bytes:
        return self.keys.derive(version, f"{purpose}/{field}", length)

    @cached_property
    def _hmacs(self) -> dict[tuple[int, str], hmac.HMAC]:
        """Pre-keyed HMAC objects, copied per value (saves two compressions each)."""
        return {
            (v, f): hmac.new(self._field_key(v, f, "hmac", 32), digestmod=hashlib.sha256)
            for v in self.keys.keys
            for f in FIELDS
        }

    @cached_property
    def _sivs(self) -> dict[tuple[int, str], AESSIV]:
        return {(v, f): AESSIV(self._field_key(v, f, "siv", 64)) for v in self.keys.keys for f in FIELDS}

    def token(self, field: str, value: str, version: int | None = None) -> str:
        """The token of an already normalised value."""
        version = self.keys.current_version if version is None else version
        data = value.encode()
        if len(data) > MAX_VALUE_BYTES:
            raise ValueTooLong(f"{field} is longer than {MAX_VALUE_BYTES} bytes once normalised")
        if self.mode == "hmac":
            mac = self._hmacs[(version, field)].copy()
            mac.update(data)
            raw = mac.digest()
        else:
            raw = self._sivs[(version, field)].encrypt(pad(data), [field.encode()])
        return f"{MODES[self.mode]}{version}:{_b64(raw)}"

    def mask_ip(self, ip: str) -> tuple[str, bool]:
        """The token of an ip, and whether the value was an address."""
        normalised, is_address = normalise_ip(ip)
        return self.token("ip", normalised), is_address

    def mask_device_id(self, device_id: str) -> str:
        return self.token("device_id", normalise_device_id(device_id))

    def unmask(self, field: str, token: str) -> str:
        """Recover the normalised value of an ``siv`` token (needs its key version)."""
        version, raw = parse_token(token, "s")
        self.keys.key(version)  # a clear error for a version that is not loaded
        try:
            padded = self._sivs[(version, field)].decrypt(raw, [field.encode()])
        except InvalidTag:  # a wrong field or key
            raise TokenError(f"token does not decrypt as {field} with key version {version}") from None
        return unpad(padded).decode()


def parse_token(token: str, mode_letter: str | None = None) -> tuple[int, bytes]:
    """Split a token into its key version and raw bytes."""
    head, sep, body = token.partition(":")
    if not sep or len(head) < 2 or not (head[1:].isascii() and head[1:].isdigit()):
        raise TokenError("not a masking token")
    if mode_letter and head[0] != mode_letter:
        raise TokenError("token was not made in siv mode and cannot be recovered")
    try:
        return int(head[1:]), _unb64(body)
    except ValueError:  # binascii.Error: not base64url
        raise TokenError("not a masking token") from None


def token_version(token: str) -> int:
    return parse_token(token)[0]
