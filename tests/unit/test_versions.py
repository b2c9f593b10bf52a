"""The app_version encoding: order-preserving, collision-free, bounded."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devkit.seed import SAMPLE
from tasks.pipeline.versions import UnencodableVersion, decode_app_version, encode_app_version

parts = st.lists(st.integers(0, 999), min_size=1, max_size=3).filter(lambda p: p[0] <= 2146)


def as_tuple(version: str) -> tuple[int, ...]:
    numbers = [int(p) for p in version.split(".")]
    return tuple(numbers + [0] * (3 - len(numbers)))


@given(parts, parts)
def test_order_and_distinctness_follow_the_versions(a: list[int], b: list[int]) -> None:
    va, vb = ".".join(map(str, a)), ".".join(map(str, b))
    ea, eb = encode_app_version(va), encode_app_version(vb)
    assert (ea < eb) == (as_tuple(va) < as_tuple(vb))
    assert (ea == eb) == (as_tuple(va) == as_tuple(vb))
    assert 0 <= ea < 2**31


def test_the_exercise_sample_does_not_collide() -> None:
    versions = {e["app_version"] for e in json.loads(SAMPLE.read_text()) if "app_version" in e}
    encoded = {v: encode_app_version(v) for v in versions}
    assert len(versions) == 96
    # 94 versions: "2.0" is "2.00" and "2.3" is "2.3.0", nothing else merges.
    assert len(set(encoded.values())) == len({as_tuple(v) for v in versions}) == 94
    assert encoded["2.3.0"] == 2_003_000 and encoded["0.96"] == 96_000 and encoded["0.9.6"] == 9_006
    assert encoded["0.96"] > encoded["0.9.6"]


@pytest.mark.parametrize("version", ["", "1.2.3.4", "v1.2", "1.-2", "2147.0.0", "1.1000", " 1", "1..2", "1e3"])
def test_unencodable_versions(version: str) -> None:
    with pytest.raises(UnencodableVersion):
        encode_app_version(version)


def test_decode_gives_the_canonical_form() -> None:
    assert decode_app_version(encode_app_version("2.00")) == "2.0.0"
