"""The credentials rule never sends a request off the machine for a local endpoint.

boto3's chain ends with the instance metadata service (169.254.169.254). With a LocalStack
on the loopback and no keys in the environment, asking the chain from every process that
starts would send that request from every developer's and CI's machine. The metadata
service is pointed here at a listener of the test's own (botocore's
AWS_EC2_METADATA_SERVICE_ENDPOINT), to see who asks it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def asks_metadata_service(endpoint: str) -> tuple[bool, str]:
    """Whether resolving the rule's keys, in a fresh process, connects to the metadata service."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(0.2)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            SQS_ENDPOINT_URL=endpoint,
            AWS_EC2_METADATA_SERVICE_ENDPOINT=f"http://127.0.0.1:{listener.getsockname()[1]}/",
            AWS_METADATA_SERVICE_NUM_ATTEMPTS="1",
            AWS_METADATA_SERVICE_TIMEOUT="1",
            AWS_CONFIG_FILE=os.devnull,
            AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        )
        script = "from tasks.broker import aws; print(aws.local_keys().get('aws_access_key_id', 'chain'))"
        done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        try:
            listener.accept()[0].close()
            return True, done.stdout.strip()
        except TimeoutError:
            return False, done.stdout.strip()


@pytest.mark.parametrize("endpoint", ["http://localhost:4566", "http://127.0.0.1:4566", "https://[::1]:4566"])
def test_a_loopback_endpoint_never_asks_the_instance_metadata_service(endpoint: str) -> None:
    asked, keys = asks_metadata_service(endpoint)
    assert not asked and keys == "test"


def test_another_endpoint_keeps_the_whole_chain() -> None:
    """A VPC endpoint on an EC2 instance takes the instance's role: the chain is whole there
    (and the listener above is seen to work)."""
    asked, _ = asks_metadata_service("http://localstack:4566")
    assert asked
