"""LocalStack's own virtual environment (its pins never touch the app's), installed once.

Standard library only: `make` runs this file with the system Python while pip fills the
project's venv, so a fresh clone pays for the two installs once, not one after the
other. `dev stack up` calls `ensure` too, and installs only what is missing or out of date.
Two first runs at once (`make demo` beside `make test`) install one after the other:
pip into one venv from two processes breaks it.

    python dev/devkit/localstack_venv.py VENV
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements-localstack.txt"


def ensure(venv: Path) -> Path:
    """The venv's python, with requirements-localstack.txt installed."""
    python = venv / "bin" / "python"
    marker = venv / "installed.txt"
    wanted = REQUIREMENTS.read_text()
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (marker.exists() and marker.read_text() == wanted):
            print(f"[stack] installing LocalStack into {venv} (once, about a minute)", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
            subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True)
            marker.write_text(wanted)
    return python


if __name__ == "__main__":
    ensure(Path(sys.argv[1]).resolve())
