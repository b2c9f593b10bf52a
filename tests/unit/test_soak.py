"""The soak's schedule is the seed's alone, and its scan for raw values misses none."""

import subprocess
import sys

from devkit import soak


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    assert soak.schedule(5, 600) == soak.schedule(5, 600)
    assert soak.schedule(5, 600) != soak.schedule(6, 600)


def test_every_kind_of_fault_strikes_inside_the_feed_with_its_quiet_ends() -> None:
    for seed in range(50):
        faults = soak.schedule(seed, 600)
        assert {f.kind for f in faults} == set(soak.KINDS)
        assert all(soak.QUIET < f.at < 600 - soak.QUIET for f in faults)
        assert all(f.worker in range(soak.WORKERS) for f in faults)
        assert [f.at for f in faults] == sorted(f.at for f in faults)


def test_the_short_soak_combines_faults() -> None:
    faults = soak.schedule(soak.SHORT_SEED, soak.SHORT_SECONDS)
    assert {f.kind for f in faults} == set(soak.KINDS)
    frozen = [f for f in faults if f.kind == "LocalStack frozen"]
    sigterms = [f.at for f in faults if f.kind == "worker SIGTERM"]
    assert any(z.at < at < z.at + z.lasts for z in frozen for at in sigterms)


def test_raw_values_are_found_whole_or_inside_longer_text() -> None:
    raw = {"10.0.0.1", "123-45-6789", "fe80::1%eth0"}
    texts = ['{"masked_ip": "s1:abc"}', '{"reason": "bad ip 110.0.0.12"}', "x123-45-67890", "fe80::1%eth0!"]
    assert soak.found_in(raw, texts) == raw
    assert soak.found_in(raw, ['{"ip": "10.0.0.2", "d": "123-45-678"}']) == set()


def test_the_verdict_names_what_failed_and_how_to_replay_it() -> None:
    outcome = soak.Outcome(seed=9, seconds=600, bound=20)
    outcome.counts = {"sent": 10, "rows": 8, "dead_letters": 1, "duplicate_deliveries_skipped": 0, "lost": 1}
    outcome.counts["doubled"] = 0
    outcome.valid = 9
    outcome.exits = [soak.Exit("soak-w0-3", 25.0, 0)]
    verdict = outcome.verdict()
    assert verdict.startswith("soak FAILED (seed 9, 600 s)")
    assert "1 lost" in verdict and "soak-w0-3 took 25.0 s" in verdict
    assert verdict.endswith("(replay: python -m tasks dev faults --soak 10 --seed 9)")


def test_a_soak_of_no_minutes_is_refused_in_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tasks", "dev", "faults", "--soak", "0", "--seed", "4"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert "--soak" in line and "0" in line
