"""Secret settings, hidden wherever Celery shows the configuration.

Celery builds `celery inspect conf` (which Flower's worker Config tab shows) and its bug
report from ``Settings.table``, which passes every setting through
``celery.app.utils.filter_hidden_settings``. That filter masks a setting whose name
matches ``celery.app.utils.HIDDEN_SETTINGS`` (API, TOKEN, KEY, SECRET, PASS, DATABASE...),
and only the password of a broker URL. ``install`` extends that pattern, in the worker
and every other process that loads the app, with celeryconfig.SECRET_SETTINGS: the
names the pattern misses (FLOWER_BASIC_AUTH, broker_url with its access key id) and,
so that a rename cannot expose them, the ones it already catches.

Celery internals relied on (celery 5.x; tests/unit/test_censor.py fails if they change):
``HIDDEN_SETTINGS`` is a compiled pattern the filter reads at each call with
``.search(key)``, before it looks at URLs.

Upstream: none filed; draft (a ``hidden_settings`` setting, the whole userinfo of an
``sqs://`` URL masked) in docs/upstream.md; celery#1546 and celery PR #10398 are related.
Delete when Celery has both (`python dev/devkit/repro.py censor` exits 3).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from celery.app import utils

MASK = "********"


def pattern(base: re.Pattern[str], secret_names: Iterable[str]) -> re.Pattern[str]:
    """Celery's pattern, plus each secret name matched whole."""
    names = "|".join(re.escape(name) for name in secret_names)
    return re.compile(f"{base.pattern}|^(?:{names})$", base.flags)


def install(secret_names: Iterable[str]) -> None:
    """Hide these settings in every configuration Celery shows (idempotent)."""
    names = tuple(secret_names)
    if names and not all(utils.HIDDEN_SETTINGS.search(name) for name in names):
        utils.HIDDEN_SETTINGS = pattern(utils.HIDDEN_SETTINGS, names)
