"""Sweep's rule: which per-process queues a killed process left behind."""

from tasks.ops.sweep import is_stale

OLD, NEW, CUTOFF = 100.0, 300.0, 200.0


def test_an_old_reply_queue_is_stale() -> None:
    assert is_stale("login-pipeline-abc-reply-celery-pidbox", OLD, 0, CUTOFF)


def test_an_old_event_queue_is_stale_only_with_unread_events() -> None:
    assert is_stale("login-pipeline-celeryev-1234", OLD, 5, CUTOFF)
    assert not is_stale("login-pipeline-celeryev-1234", OLD, 0, CUTOFF)  # a live listener drains it


def test_young_queues_and_the_pipelines_own_are_never_stale() -> None:
    assert not is_stale("login-pipeline-abc-reply-celery-pidbox", NEW, 0, CUTOFF)
    assert not is_stale("login-pipeline-batches", OLD, 1000, CUTOFF)
    assert not is_stale("login-queue", OLD, 1000, CUTOFF)
