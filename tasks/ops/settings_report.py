"""What `python -m tasks config` prints: each setting's value in effect, where it came
from (the environment, or its default), and no secret: a secret shows as hidden, a URL
with its password replaced."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from pydantic import SecretStr

import celeryconfig

HIDDEN = "(hidden)"


@dataclass(frozen=True)
class SettingInEffect:
    name: str
    value: str  # as printed: secrets hidden
    source: str  # "environment" or "default"


def without_password(url: str) -> str:
    """The URL with its passwords (and nothing else) replaced by stars. A PostgreSQL URL
    is shown as libpq reads it (celeryconfig.libpq_reading), its `password` and
    `sslpassword` starred wherever they were given; in any other URL, the text between
    the user's `:` and the last `@`."""
    if not url.startswith(celeryconfig.POSTGRES_SCHEMES):
        return re.sub(r"://([^:@/]*):.*@", r"://\1:***@", url, flags=re.DOTALL)
    reading = celeryconfig.libpq_reading(url)
    user, password, dbname = (reading.pop(key, None) for key in ("user", "password", "dbname"))
    netloc = quote(user or "", safe="") + (":***" if password is not None else "")
    netloc += "@" if netloc else ""
    host, port = reading.get("host", ""), reading.get("port", "")
    if host and "," not in host and not host.startswith("/"):  # one host: in the URL's authority
        netloc += f"[{reading.pop('host')}]" if ":" in host else reading.pop("host")
        netloc += f":{reading.pop('port')}" if port and "," not in port else ""
    path = f"/{quote(dbname, safe='')}" if dbname else ""
    query = urlencode([(k, "***" if k in celeryconfig.LIBPQ_SECRETS else v) for k, v in reading.items()], safe="/*,")
    return f"{url.partition('://')[0]}://{netloc}{path}" + (f"?{query}" if query else "")


def shown(value: object) -> str:
    """A value as the report prints it; secrets never in clear."""
    if isinstance(value, SecretStr):
        secret = value.get_secret_value()
        if not secret:
            return "(empty)"
        return without_password(secret) if "://" in secret else HIDDEN
    if isinstance(value, bool):
        return str(value).lower()
    return celeryconfig.hidden_userinfo(str(value)) if value != "" else "(empty)"


def settings_in_effect(settings: celeryconfig.Settings | None = None) -> list[SettingInEffect]:
    """Every declared setting, in the declared order (docs/configuration.md's), as this process reads it."""
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
