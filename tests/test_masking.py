"""Masking: deterministic, keyed, field-separated, normalised, versioned."""

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.pipeline.keys import parse_key_ring
from tasks.pipeline.masking import Masker, TokenError, normalise_ip, token_version


def ring(*keys: tuple[int, int]) -> str:
    return ",".join(f"{v}:{base64.b64encode(bytes([b]) * 32).decode()}" for v, b in keys)


HMAC = Masker(parse_key_ring(ring((1, 1))), "hmac")
SIV = Masker(parse_key_ring(ring((1, 1))), "siv")


def test_same_value_same_token_and_repeats_stay_visible() -> None:
    assert HMAC.mask_ip("1.2.3.4") == HMAC.mask_ip("1.2.3.4")
    assert HMAC.mask_ip("1.2.3.4") != HMAC.mask_ip("1.2.3.5")


def test_different_keys_give_different_tokens() -> None:
    other = Masker(parse_key_ring(ring((1, 2))), "hmac")
    assert HMAC.mask_device_id("593-47-5928") != other.mask_device_id("593-47-5928")


def test_fields_are_separated() -> None:
    assert HMAC.token("ip", "x") != HMAC.token("device_id", "x")


def test_tokens_carry_mode_and_key_version_and_fit_the_column() -> None:
    rotated = Masker(parse_key_ring(ring((1, 1), (2, 2))), "hmac")
    token = rotated.mask_device_id("d" * 128)
    assert token.startswith("h2:") and token_version(token) == 2 and len(token) <= 256
    assert len(SIV.mask_device_id("d" * 128)) <= 256


@pytest.mark.parametrize(
    ("raw", "normal", "is_address"),
    [
        (" 199.172.111.135 ", "199.172.111.135", True),
        ("010.001.002.003", "10.1.2.3", True),
        ("::ffff:10.1.2.3", "10.1.2.3", True),
        ("2001:0DB8:0000:0000:0000:0000:0000:0001", "2001:db8::1", True),
        ("224.0.0.1", "224.0.0.1", True),
        ("127.0.0.1", "127.0.0.1", True),
        ("not-an-ip", "not-an-ip", False),
    ],
)
def test_normalisation(raw: str, normal: str, is_address: bool) -> None:
    assert normalise_ip(raw) == (normal, is_address)
    assert HMAC.mask_ip(raw) == (HMAC.token("ip", normal), is_address)


@given(st.text(max_size=128))
def test_siv_round_trip(value: str) -> None:
    assert SIV.unmask("device_id", SIV.token("device_id", value)) == value


def test_siv_refuses_a_wrong_field_key_or_mode() -> None:
    token = SIV.token("ip", "1.2.3.4")
    with pytest.raises(TokenError):
        SIV.unmask("device_id", token)
    with pytest.raises(TokenError):
        Masker(parse_key_ring(ring((1, 9))), "siv").unmask("ip", token)
    with pytest.raises(TokenError):
        SIV.unmask("ip", HMAC.token("ip", "1.2.3.4"))


def test_key_ring_never_shows_key_bytes() -> None:
    keys = parse_key_ring(ring((1, 65)))
    assert "QUFB" not in repr(keys) and "AAA" not in repr(keys)
