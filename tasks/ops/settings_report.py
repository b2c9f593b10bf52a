"""What `python -m tasks config` prints: each setting's value in effect, where it came
from (the environment, or its default), and no secret: a secret shows as hidden, a URL
with its password replaced."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

from pydantic import SecretStr

import celeryconfig

HIDDEN = "(hidden)"


@dataclass(frozen=True)
class SettingInEffect:
    name: str
    value: str  # as printed: secrets hidden
    source: str  # "environment" or "default"


def without_password(url: str) -> str:
    """The URL with its passwords (and nothing else) replaced by stars: the one after the
    user name, and libpq's `password=` parameter in the query."""
    parts = urlsplit(url)
    user, at, host = parts.netloc.rpartition("@")
    netloc = f"{user.partition(':')[0]}:***@{host}" if at and ":" in user else parts.netloc
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="/*")
    if netloc == parts.netloc and not any(k.lower() == "password" for k, _ in pairs):
        return url
    # By hand: urlunsplit drops the empty host of libpq's socket URLs (postgresql:///db?host=…).
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def shown(value: object) -> str:
    """A value as the report prints it; secrets never in clear."""
    if isinstance(value, SecretStr):
        secret = value.get_secret_value()
        if not secret:
            return "(empty)"
        return without_password(secret) if "://" in secret else HIDDEN
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if value != "" else "(empty)"


def settings_in_effect(settings: celeryconfig.Settings | None = None) -> list[SettingInEffect]:
    """Every declared setting, in README's order, as this process reads it."""
    settings = settings or celeryconfig.in_effect()
    from_environment = settings.model_fields_set
    return [
        SettingInEffect(name, shown(getattr(settings, name)), "environment" if name in from_environment else "default")
        for name in type(settings).model_fields
    ]


def render(rows: list[SettingInEffect]) -> str:
    """Aligned columns: variable, value, source."""
    width = max(len(row.name) for row in rows)
    value_width = min(max(len(row.value) for row in rows), 60)
    return "\n".join(f"{row.name:<{width}}  {row.value:<{value_width}}  {row.source}" for row in rows)
