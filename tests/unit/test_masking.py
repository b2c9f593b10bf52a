"""Masking: deterministic, keyed, field-separated, normalised, versioned."""

import base64
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.pipeline.keys import (
    MaskingKeyError,
    Surroundings,
    create_development_key,
    parse_key_ring,
    refuse_development_key,
)
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
    token = rotated.mask_device_id("d" * 127)
    assert token.startswith("h2:") and token_version(token) == 2 and len(token) <= 256
    assert len(SIV.mask_device_id("d" * 127)) <= 256


def test_siv_tokens_do_not_tell_the_length_of_the_value() -> None:
    assert len(SIV.mask_ip("1.2.3.4")[0]) == len(SIV.mask_ip("255.255.255.255")[0])
    assert len(SIV.mask_device_id("1")) == len(SIV.mask_device_id("593-47-5928"))
    assert SIV.unmask("ip", SIV.mask_ip("255.255.255.255")[0]) == "255.255.255.255"


def test_device_ids_are_nfkc_normalised_and_keep_their_case() -> None:
    assert SIV.mask_device_id("\uff15\uff19\uff13-47-5928") == SIV.mask_device_id("593-47-5928")
    assert SIV.mask_device_id("aB-1") != SIV.mask_device_id("ab-1")


def test_a_key_ring_naming_one_version_twice_is_refused() -> None:
    with pytest.raises(MaskingKeyError, match="twice"):
        parse_key_ring(ring((1, 1), (1, 2)))


def the_stack(stack: Path, **changed: object) -> Surroundings:
    """The embedded stack in `stack` as `stack up` leaves it, with some settings changed."""
    where = Surroundings(stack, "http://localhost:4566", "", stack / "database.url")
    return replace(where, **changed)


def test_the_development_key_is_refused_outside_the_stack_that_made_it(tmp_path) -> None:
    stack = tmp_path / "stack"
    create_development_key(stack / "masking.keys", stack)
    (stack / "database.url").write_text("postgresql://postgres:@/postgres?host=/tmp/pg-socket\n")
    keys = parse_key_ring((stack / "masking.keys").read_text())
    refuse_development_key(keys, the_stack(stack))  # its own stack: allowed
    refuse_development_key(keys, the_stack(stack, sqs_endpoint="http://127.0.0.1:4599"))
    refuse_development_key(keys, the_stack(stack, database_url="postgresql://postgres:@/postgres?host=/tmp/pg-socket"))
    copied = parse_key_ring(
        "\n".join(line for line in (stack / "masking.keys").read_text().splitlines() if not line.startswith("#"))
    )
    with pytest.raises(MaskingKeyError, match="fingerprint"):
        refuse_development_key(copied, the_stack(tmp_path / "elsewhere"))


@pytest.mark.parametrize(
    ("changed", "why"),
    [
        ({"sqs_endpoint": ""}, "SQS_ENDPOINT_URL"),  # real AWS
        ({"sqs_endpoint": "https://sqs.eu-west-1.amazonaws.com"}, "SQS_ENDPOINT_URL"),
        ({"sqs_endpoint": "http://localstack.prod.internal:4566"}, "SQS_ENDPOINT_URL"),
        ({"database_url": "postgresql://app@db.prod.internal/logins"}, "DATABASE_URL"),
        ({"database_url": "postgresql://postgres@127.0.0.1:5432/other"}, "DATABASE_URL"),
    ],
    ids=["real-aws", "aws-endpoint", "remote-localstack", "remote-database", "another-local-database"],
)
def test_a_copied_fingerprint_does_not_take_the_key_to_real_services(tmp_path, changed: dict, why: str) -> None:
    """The issue's recipe: the key and its fingerprint copied into a folder of one's own,
    then pointed at real SQS or another database."""
    fake = tmp_path / "fake-stack"
    create_development_key(tmp_path / "masking.keys", fake)
    keys = parse_key_ring((tmp_path / "masking.keys").read_text())
    refuse_development_key(keys, the_stack(fake))  # a stack of its own on this machine: allowed
    with pytest.raises(MaskingKeyError, match=why):
        refuse_development_key(keys, the_stack(fake, **changed))


def test_a_database_url_file_naming_a_remote_server_is_refused(tmp_path) -> None:
    fake = tmp_path / "fake-stack"
    create_development_key(tmp_path / "masking.keys", fake)
    keys = parse_key_ring((tmp_path / "masking.keys").read_text())
    for remote in ("postgresql://app@db.prod.internal/logins", "postgresql://app@/x?host=/tmp/s,db.prod.internal"):
        (fake / "database.url").write_text(remote)
        with pytest.raises(MaskingKeyError, match="another machine"):
            refuse_development_key(keys, the_stack(fake))
        with pytest.raises(MaskingKeyError, match="another machine"):
            refuse_development_key(keys, the_stack(fake, database_url=remote))


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
        ("fe80::1%eth0", "fe80::1", True),
        ("::ffff:10.1.2.3%eth0", "10.1.2.3", True),
        ("198.51.100.7\u00b2", "198.51.100.7\u00b2", False),
        ("\uff11.2.3.4", "\uff11.2.3.4", False),
        ("1.2.3.\u0664", "1.2.3.\u0664", False),
    ],
)
def test_normalisation(raw: str, normal: str, is_address: bool) -> None:
    assert normalise_ip(raw) == (normal, is_address)
    assert HMAC.mask_ip(raw) == (HMAC.token("ip", normal), is_address)


@given(st.text(max_size=127).filter(lambda v: len(v.encode("utf-8", "surrogatepass")) <= 127))
def test_siv_round_trip(value: str) -> None:
    token = SIV.token("device_id", value)
    assert SIV.unmask("device_id", token) == value and len(token) <= 256


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


@pytest.mark.parametrize("token", ["s9:AAAA", "s1:a", "s1:!!!!", "s\u0661:AAAA", "nonsense"])
def test_a_malformed_token_is_a_token_error_never_a_crash(token: str) -> None:
    with pytest.raises((TokenError, MaskingKeyError)):
        SIV.unmask("ip", token)
