"""Off the bench: the pipeline against an SQS endpoint that checks what real AWS checks.

LocalStack takes any request. In front of it, tests/endpoint.py's endpoint checks every
request's SigV4 signature (botocore's own SigV4Auth recomputes it) and session token
against the credentials it accepts now, or serves TLS with a certificate of a private CA
the test makes. Through it, real workers, beat and `python -m tasks` commands:

- temporary credentials (key, secret, session token in the environment) sign every call,
  the lean calls', boto3's and kombu's (SNS events included): events become rows;
- credentials of a credential_process that rotate under a running worker are used after
  the rotation by every client, while the endpoint accepts only the new ones;
- a certificate that does not verify is named in one line, exit 2, with one handshake
  (never retried) by `status`, `init`, `redrive`, the worker and beat; trusted through
  AWS_CA_BUNDLE, events become rows over TLS.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

import celeryconfig as config
from devkit import seed
from tests.endpoint import Endpoint, PrivateCA
from tests.helpers import Worker, drained, python_m_tasks, spawn, wait_until

REFRESH_SECONDS = 3  # credential_process's credentials are due for refresh this long after they are fetched
# What a rotated-out key stays valid for after botocore's refresh window, as STS's do until they expire.
CREDENTIAL_PROCESS = """
import datetime, json, pathlib, sys
current = json.loads(pathlib.Path(sys.argv[1]).read_text())
# botocore refreshes credentials 15 minutes before they expire: these are due in REFRESH seconds.
expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=15, seconds=float(sys.argv[2]))
print(json.dumps({"Version": 1, **current, "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}))
"""


def temporary_credentials() -> dict[str, str]:
    return {
        "AccessKeyId": "ASIA" + secrets.token_hex(8).upper(),
        "SecretAccessKey": secrets.token_urlsafe(30),
        "SessionToken": secrets.token_urlsafe(96),
    }


def accepting(*generations: dict[str, str]) -> dict[str, tuple[str, str | None]]:
    return {c["AccessKeyId"]: (c["SecretAccessKey"], c["SessionToken"]) for c in generations}


def send_events(count: int, seed_number: int) -> None:
    seed.send(config.SOURCE_QUEUE, [body for body, _ in seed.generate(count, seed=seed_number)])


def name(what: str) -> str:
    return f"{what}-{time.monotonic_ns()}"


@pytest.fixture
def folder() -> Iterator[Path]:
    path = config.STACK_DIR / name("aws")
    path.mkdir()
    yield path


def test_temporary_credentials_sign_every_call_with_their_session_token(clean, db, folder: Path) -> None:
    """The environment's key, secret and session token (what aws-vault, SSO or CI's OIDC
    roles give) reach every client: a worker with beat drains events into rows, `status`
    and `redrive` answer, and the endpoint refused none of their calls. It does refuse
    the same key signed without the token, or with a forged secret."""
    credentials = temporary_credentials()
    endpoint = Endpoint(config.LOCALSTACK_PORT, accepted=accepting(credentials))
    env = {
        "SQS_ENDPOINT_URL": endpoint.url,
        "AWS_ACCESS_KEY_ID": credentials["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": credentials["SecretAccessKey"],
        "AWS_SESSION_TOKEN": credentials["SessionToken"],
    }
    worker = None
    try:
        for secret, token in ((credentials["SecretAccessKey"], None), ("forged", credentials["SessionToken"])):
            attacker = boto3.client(
                "sqs",
                endpoint_url=endpoint.url,
                region_name=config.AWS_REGION,
                aws_access_key_id=credentials["AccessKeyId"],
                aws_secret_access_key=secret,
                aws_session_token=token,
            )
            with pytest.raises(ClientError):
                attacker.list_queues()
        assert dict(endpoint.refused) == {"no session token": 1, "signature does not match": 1}
        worker = Worker(name("temporary"), beat=True, env=env)
        send_events(300, seed_number=281)
        assert drained(db, 300)["received"] == 300
        for command in (("status",), ("redrive", "--dry-run")):
            result = python_m_tasks(*command, env=env)
            assert result.returncode == 0, result.stderr
        assert dict(endpoint.refused) == {"no session token": 1, "signature does not match": 1}
        assert endpoint.signed_by[credentials["AccessKeyId"]] > 10
        assert "sns" in endpoint.services and "sqs" in endpoint.services  # events and the broker both signed
    finally:
        if worker:
            worker.stop()
        endpoint.close()


def test_credentials_that_rotate_under_a_running_worker_are_used_after_rotation(clean, db, folder: Path) -> None:
    """A credential_process (AWS_CONFIG_FILE) hands out credentials due for refresh in
    REFRESH_SECONDS. The worker drains events; then the credentials rotate, the old key is
    accepted only until every client has gone a refresh window without it, and from then
    on the endpoint accepts the new key alone: events sent after still become rows, and
    no call is refused."""
    first, second = temporary_credentials(), temporary_credentials()
    current = folder / "current.json"
    current.write_text(json.dumps(first))
    script = folder / "credential_process.py"
    script.write_text(CREDENTIAL_PROCESS)
    profile = folder / "config"
    profile.write_text(f"[default]\ncredential_process = {sys.executable} {script} {current} {REFRESH_SECONDS}\n")
    (folder / "credentials").write_text("")
    endpoint = Endpoint(config.LOCALSTACK_PORT, accepted=accepting(first))
    env = {
        "SQS_ENDPOINT_URL": endpoint.url,
        "AWS_CONFIG_FILE": str(profile),
        "AWS_SHARED_CREDENTIALS_FILE": str(folder / "credentials"),
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_SESSION_TOKEN": "",  # empty: boto3's chain skips them (the default profile's process decides)
    }
    worker = None
    try:
        worker = Worker(name("rotating"), beat=True, env=env)
        send_events(200, seed_number=282)
        assert drained(db, 200)["received"] == 200
        assert endpoint.signed_by[first["AccessKeyId"]] > 0

        current.write_text(json.dumps(second))  # rotation: both valid until the old one's refresh window passed
        endpoint.accept_only(accepting(first, second))
        wait_until(lambda: endpoint.signed_by[second["AccessKeyId"]] > 0, timeout=30, what="the new key in use")
        wait_until(
            lambda: time.monotonic() - endpoint.last_seen[first["AccessKeyId"]] > REFRESH_SECONDS + 1,
            timeout=60,
            poll=0.2,
            what="no call signed with the old key for a refresh window",
        )
        endpoint.accept_only(accepting(second))  # the old key has expired
        before = endpoint.signed_by[second["AccessKeyId"]]
        send_events(200, seed_number=283)
        assert drained(db, 400)["received"] == 400
        assert endpoint.signed_by[second["AccessKeyId"]] > before
        assert not endpoint.refused, dict(endpoint.refused)
    finally:
        if worker:
            worker.stop()
        endpoint.close()


@pytest.fixture(scope="module")
def private_ca() -> PrivateCA:
    return PrivateCA(config.STACK_DIR / name("ca"))


@pytest.fixture
def tls_endpoint(private_ca: PrivateCA) -> Iterator[Endpoint]:
    endpoint = Endpoint(config.LOCALSTACK_PORT, tls=private_ca.server_context())
    yield endpoint
    endpoint.close()


def assert_named(line: str, endpoint: Endpoint, ca: PrivateCA) -> None:
    assert line.startswith(f"SQS/SNS at localhost:{endpoint.port}: its TLS certificate does not verify ("), line
    assert "'CN=localhost' issued by" in line and f"'CN={ca.name}'" in line, line
    assert "trust its CA with AWS_CA_BUNDLE" in line and "dev stack up" not in line, line


@pytest.mark.parametrize("command", [("status",), ("init",), ("redrive", "--dry-run")], ids=lambda c: c[0])
def test_an_untrusted_certificate_is_named_in_one_line_and_not_retried(
    command: tuple[str, ...], tls_endpoint: Endpoint, private_ca: PrivateCA
) -> None:
    """Not "SQS unreachable: start it": the endpoint is up and its certificate is the
    problem. One line naming the endpoint, what the check said and the certificate; exit
    2; one refused handshake, not botocore's three attempts."""
    result = python_m_tasks(*command, env={"SQS_ENDPOINT_URL": tls_endpoint.url})
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert_named(line, tls_endpoint, private_ca)
    assert tls_endpoint.refused_handshakes == 1


@pytest.mark.parametrize("process", ["worker", "beat"])
def test_a_worker_or_beat_facing_an_untrusted_certificate_stops_with_one_line(
    process: str, tls_endpoint: Endpoint, private_ca: PrivateCA
) -> None:
    log = config.STACK_DIR / f"{name(process)}.log"
    options = ["--pool=solo"] if process == "worker" else []
    started = spawn(
        [sys.executable, "-m", "celery", "-A", "tasks", process, *options],
        log,
        env={"SQS_ENDPOINT_URL": tls_endpoint.url},
    )
    assert started.wait(timeout=60) == 2, log.read_text()[-2000:]
    [line] = [line for line in log.read_text().splitlines() if "does not verify" in line]
    assert_named(line[line.index("SQS/SNS at") :], tls_endpoint, private_ca)


def test_with_aws_ca_bundle_the_pipeline_runs_over_tls_with_a_private_ca(
    clean, db, tls_endpoint: Endpoint, private_ca: PrivateCA
) -> None:
    """Every client verifies with AWS_CA_BUNDLE: boto3's, the lean calls' and kombu's
    asynchronous receive. Events become rows through a worker and beat over TLS."""
    env = {"SQS_ENDPOINT_URL": tls_endpoint.url, "AWS_CA_BUNDLE": str(private_ca.bundle)}
    worker = Worker(name("tls"), beat=True, env=env)
    try:
        send_events(300, seed_number=284)
        assert drained(db, 300)["received"] == 300
        status = python_m_tasks("status", env=env)
        assert status.returncode == 0, status.stderr
        assert tls_endpoint.refused_handshakes == 0 and tls_endpoint.requests > 10
    finally:
        worker.stop()
