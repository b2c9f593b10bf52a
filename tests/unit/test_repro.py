"""dev/devkit/repro.py: each failure still shows on stock Celery and kombu and not with the
override. When stock stops failing, this fails: the override may then be deleted
(docs/upstream.md says on what condition)."""

from __future__ import annotations

import pytest

from devkit import repro


@pytest.mark.parametrize("name", list(repro.REPRODUCTIONS))
def test_stock_still_fails_and_the_override_does_not(name: str) -> None:
    outcome = repro.REPRODUCTIONS[name]()
    assert outcome.stock_fails, f"stock no longer fails ({outcome.stock}): see docs/upstream.md on deleting it"
    assert outcome.stock != outcome.ours


def test_the_override_hides_what_stock_shows() -> None:
    assert repro.ACCESS_KEY_ID not in repro.censor().ours
    assert repro.RAW_IP not in repro.request().ours
    assert repro.control().ours.startswith("20 calls of one thread, 1 reply queue")


def test_an_unknown_reproduction_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert repro.main(["nope"]) == 2
    assert capsys.readouterr().err.strip() == "no reproduction nope: choose from censor, request, control, broker"
