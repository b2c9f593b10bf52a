"""Stand-ins for the images docker-compose.yml names, built here from Debian's packages and PyPI.

These machines reach no image registry, so `python:3.11-slim`, `localstack/localstack:4.13.1` and
`postgres:16` cannot be pulled. Each stand-in is built from a recipe in tests/compose/standins/ and
tagged with a hash of everything that goes into it, so a second run reuses it:

    base        Debian 12 minbase with python3.11, pip, venv, curl (mmdebstrap, `podman import`)
    python      python:3.11-slim's layout on that base (the project's Dockerfile builds on it)
    localstack  the embedded stack's pinned LocalStack (requirements-localstack.txt)
    postgres    Debian's PostgreSQL 15 behind the official image's entrypoint contract

None of this ships: the Dockerfile and docker-compose.yml keep the official images, and the
override file the test writes (`override`) maps their names to these tags.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECIPES = Path(__file__).resolve().parent / "standins"
CONTAINERS_CONF = RECIPES / "containers.conf"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BASE_PACKAGES = "python3.11,python3-pip,python3-venv,ca-certificates,curl"
PREFIX = "localhost/login-pipeline-standin"


def environment() -> dict[str, str]:
    """The environment every podman call of the test runs with."""
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(*args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], env=environment(), capture_output=True, text=True, check=check, timeout=timeout
    )


def _tag(name: str, *inputs: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in inputs:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return f"{PREFIX}-{name}:{digest.hexdigest()[:16]}"


def _exists(tag: str) -> bool:
    return podman("image", "exists", tag, check=False).returncode == 0


def base() -> str:
    """Debian 12 minbase with Python and curl, and the host's CA bundle (pip in a build reaches
    the package index as the host does)."""
    tag = _tag("base", BASE_PACKAGES, HOST_CA_BUNDLE.read_bytes())
    if _exists(tag):
        return tag
    with tempfile.TemporaryDirectory(prefix="standin-base-") as folder:
        tar = Path(folder) / "base.tar"
        subprocess.run(
            [
                "mmdebstrap",
                "--quiet",
                "--variant=minbase",
                f"--include={BASE_PACKAGES}",
                f"--customize-hook=copy-in {HOST_CA_BUNDLE} /etc/ssl/certs",
                "--customize-hook=rm -rf $1/var/lib/apt/lists/* $1/var/cache/apt/*.bin",
                "bookworm",
                str(tar),
            ],
            check=True,
            capture_output=True,
            timeout=900,
        )
        podman("import", "--quiet", "--change", 'CMD ["bash"]', str(tar), tag)
    return tag


def _build(name: str, containerfile: str, files: list[Path], **args: str) -> str:
    """Build a recipe with `files` as its whole context (the repository's .dockerignore, made for the
    shipped image, would keep requirements-localstack.txt out)."""
    recipe = RECIPES / containerfile
    inputs = [recipe.read_bytes(), *(p.read_bytes() for p in files), *(f"{k}={v}" for k, v in sorted(args.items()))]
    tag = _tag(name, *inputs)
    if _exists(tag):
        return tag
    with tempfile.TemporaryDirectory(prefix=f"standin-{name}-") as context:
        for path in files:
            shutil.copy2(path, context)
        flags = [f"--build-arg={k}={v}" for k, v in args.items()]
        podman("build", "--quiet", "--file", str(recipe), *flags, "--tag", tag, context)
    return tag


def python(base_tag: str) -> str:
    return _build("python", "python.Containerfile", [], BASE=base_tag)


def localstack(python_tag: str) -> str:
    requirements = ROOT / "requirements-localstack.txt"
    return _build("localstack", "localstack.Containerfile", [requirements], PYTHON_IMAGE=python_tag)


def postgres(base_tag: str) -> str:
    return _build("postgres", "postgres.Containerfile", [RECIPES / "postgres-entrypoint.sh"], BASE=base_tag)


def build_all() -> dict[str, str]:
    """Every stand-in, built or reused: official image name -> local tag."""
    base_tag = base()
    python_tag = python(base_tag)
    return {
        "python:3.11-slim": python_tag,
        "localstack/localstack:4.13.1": localstack(python_tag),
        "postgres:16": postgres(base_tag),
    }
