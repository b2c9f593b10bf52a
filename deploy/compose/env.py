"""Fresh secrets for `docker compose up`, as a .env file compose reads: `make compose-up` writes
it once (mode 600, git-ignored) and never overwrites it. Standard library only.

    python deploy/compose/env.py .env

The masking key is 32 random bytes in base64 (version 1); passwords are hex, so they are URL-safe
in the database URLs compose builds from them; Flower's password has the 12+ characters it
requires beyond the loopback.
"""

from __future__ import annotations

import base64
import os
import secrets
import sys
from pathlib import Path


def fresh() -> dict[str, str]:
    return {
        "MASKING_KEYS": f"1:{base64.b64encode(secrets.token_bytes(32)).decode()}",
        "FLOWER_BASIC_AUTH": f"admin:{secrets.token_hex(16)}",
        "POSTGRES_PASSWORD": secrets.token_hex(16),
        "WORKER_DB_PASSWORD": secrets.token_hex(16),
        "METRICS_DB_PASSWORD": secrets.token_hex(16),
    }


def write(path: Path) -> bool:
    """Write fresh secrets to `path` unless it exists; True if it wrote them."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as out:
        out.write("# Made by deploy/compose/env.py: keep it secret, never commit it.\n")
        out.writelines(f"{name}={value}\n" for name, value in fresh().items())
    return True


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ".env")
    if write(target):
        print(f"{target}: fresh secrets written (mode 600)")
    else:
        print(f"{target}: exists, kept as it is")
