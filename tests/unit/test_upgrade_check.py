"""`make upgrade-check`'s pure parts: which versions it picks from the index, and its report."""

from __future__ import annotations

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from devkit import upgrade_check as check

PIP_OUTPUT = """celery (5.8.1)
Available versions: 5.8.1, 5.8.0, 5.8.0rc1, 5.7.2, 5.7.0, 5.6.3, 6.0.0
"""


def versions(*texts: str) -> list[Version]:
    return [Version(text) for text in texts]


def test_the_index_listing_is_read_as_versions() -> None:
    assert check.parse_versions(PIP_OUTPUT) == versions(
        "5.8.1", "5.8.0", "5.8.0rc1", "5.7.2", "5.7.0", "5.6.3", "6.0.0"
    )
    assert check.parse_versions("ERROR: No matching distribution found for nothing") == []


def test_the_newest_final_release_within_the_range_is_chosen() -> None:
    available = check.parse_versions(PIP_OUTPUT)
    assert check.newest_within(available, SpecifierSet(">=5.7,<5.8")) == Version("5.7.2")
    assert check.newest_within(available, SpecifierSet(">=7")) is None
    assert check.newest_within(versions("5.7.0", "5.7.1rc1"), SpecifierSet(">=5.7,<5.8")) == Version("5.7.0")


def test_the_next_minor_outside_is_the_newest_of_the_first_series_above_the_range() -> None:
    available = check.parse_versions(PIP_OUTPUT)
    assert check.next_outside(available, SpecifierSet(">=5.7,<5.8")) == Version("5.8.1")  # not 6.0.0, not the rc
    assert check.next_outside(available, SpecifierSet(">=5.7,<7")) is None  # nothing above the range
    assert check.next_outside(versions("1.44.18", "2.0.0", "2.0.3", "2.1.0"), SpecifierSet(">=1.35,<2")) == Version(
        "2.0.3"
    )
    assert check.next_outside(versions("5.6.3"), SpecifierSet(">=5.7,<5.8")) is None  # older releases only


def test_ranges_come_from_pyproject_and_pins_from_the_lock() -> None:
    pyproject = '[project]\ndependencies = ["celery>=5.7,<5.8", "Tornado>=6.4,<7", "click>=8.1"]\n'
    assert check.declared_ranges(pyproject, ("celery", "tornado")) == {
        "celery": SpecifierSet(">=5.7,<5.8"),
        "tornado": SpecifierSet(">=6.4,<7"),
    }
    lock = "celery==5.7.0\n    # via login-pipeline\nkombu==5.7.0 \\\n    --hash=sha256:ab\n"
    assert check.locked_versions(lock) == {"celery": Version("5.7.0"), "kombu": Version("5.7.0")}
    assert check.with_pins(lock, {"kombu": Version("5.7.2")}) == lock.replace("kombu==5.7.0", "kombu==5.7.2")


def test_failed_tests_are_read_from_pytests_summary() -> None:
    output = "FAILED tests/unit/test_pool.py::test_a - AssertionError\nERROR tests/test_monitoring.py::test_b\n1 failed"
    assert check.failed_tests(output) == ["tests/unit/test_pool.py::test_a", "tests/test_monitoring.py::test_b"]


def test_the_report_says_what_moved_and_what_broke() -> None:
    runs = [
        check.Run("within", {"boto3": Version("1.44.18")}, ran=["tests/unit"]),
        check.Run("next", {"celery": Version("5.8.1")}, broken=["tests/unit/test_pool.py::test_a"], ran=["tests/unit"]),
    ]
    assert check.results_table(runs).splitlines() == [
        "| run    | versions moved | test targets | broke                           |",
        "|--------|----------------|--------------|---------------------------------|",
        "| within | boto3 1.44.18  | 1            | none                            |",
        "| next   | celery 5.8.1   | 1            | tests/unit/test_pool.py::test_a |",
    ]
    versions_report = check.versions_table(
        {"celery": Version("5.7.0")},
        {"celery": SpecifierSet(">=5.7,<5.8")},
        {"celery": Version("5.7.0")},
        {"celery": None},
    )
    assert "| celery " in versions_report and "5.7.0 (unchanged)" in versions_report
    assert "none on the index" in versions_report
