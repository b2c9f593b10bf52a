"""Celery's configuration filter hides every secret setting once tasks.celery is loaded."""

from __future__ import annotations

from celery.app.utils import filter_hidden_settings

import celeryconfig
from tasks.celery import app

SECRET = "s3cret-value-never-shown"


def test_every_secret_setting_is_masked_by_celerys_own_filter() -> None:
    shown = filter_hidden_settings({name: SECRET for name in celeryconfig.SECRET_SETTINGS})
    assert shown == {name: "********" for name in celeryconfig.SECRET_SETTINGS}


def test_the_broker_url_is_masked_whole_and_other_settings_stay_readable() -> None:
    shown = filter_hidden_settings(
        {"broker_url": f"sqs://access-id:{SECRET}@localhost:4566", "FETCH_INTERVAL": 2.0, "SQS_ENDPOINT_URL": "x"}
    )
    assert shown == {"broker_url": "********", "FETCH_INTERVAL": 2.0, "SQS_ENDPOINT_URL": "x"}


def test_the_apps_table_shows_no_secret_value() -> None:
    table = app.conf.table(with_defaults=True)
    for name in celeryconfig.SECRET_SETTINGS:
        assert table.get(name, "********") == "********", name
