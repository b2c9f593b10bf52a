"""The app_version encoding: version strings such as "2.3.0" as order-preserving integers.

`user_logins.app_version` is an integer while events carry dotted versions. A version
is read as up to three non-negative integer components (major.minor.patch; missing
components are zero), and encoded as

    major * 1_000_000 + minor * 1_000 + patch        ("2.3.0" -> 2003000, "0.96" -> 96000)

Each of minor and patch is 0..999 and major is 0..2146, so the result fits PostgreSQL's
integer. Two versions compare the same way as their integers, and distinct versions
never share an integer. Versions that compare equal share one: "2", "2.0", "2.00" and
"2.0.0" are one release, as in semantic versioning and PEP 440. Anything else (more than
three components, letters, signs, a component out of range) cannot be encoded and makes
its record a dead letter.
"""

from __future__ import annotations

import re

_VERSION = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,9}){0,2}")
MAX_MAJOR = 2146
MAX_PART = 999


class UnencodableVersion(ValueError):
    """The version string has no place on the integer scale."""


def encode_app_version(version: str) -> int:
    """Encode a dotted version as an order-preserving integer."""
    if not _VERSION.fullmatch(version):
        raise UnencodableVersion("app_version is not a dotted number of up to three parts")
    major, minor, patch = ([int(p) for p in version.split(".")] + [0, 0])[:3]
    if major > MAX_MAJOR or minor > MAX_PART or patch > MAX_PART:
        raise UnencodableVersion("app_version has a part out of range")
    return major * 1_000_000 + minor * 1_000 + patch


def decode_app_version(encoded: int) -> str:
    """The canonical "major.minor.patch" form of an encoded version."""
    major, rest = divmod(encoded, 1_000_000)
    minor, patch = divmod(rest, 1_000)
    return f"{major}.{minor}.{patch}"
