"""`faults`: run the fault scenarios (tests/test_faults.py) against a fresh test stack
and print their table; with ``--write-docs``, write it into docs/reliability.md.

The table is made by this command, never by `make test`, so that the suite writes no
tracked file; each suite run keeps its own figures in its stack folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- faults:begin -->", "<!-- faults:end -->"
COLUMNS = (
    ("fault", "fault"),
    ("sent", "events sent"),
    ("rows", "rows written"),
    ("dead_letters", "dead letters"),
    ("duplicate_deliveries_skipped", "duplicate deliveries skipped"),
    ("lost", "lost"),
    ("doubled", "doubled"),
)


def table(results: list[dict[str, object]]) -> str:
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|---" + "|---:" * (len(COLUMNS) - 1) + "|"]
    lines += ["| " + " | ".join(str(r[key]) for key, _ in COLUMNS) + " |" for r in results]
    return "\n".join(lines)


def write_docs(text: str) -> None:
    head, _, rest = DOC.read_text().partition(BEGIN)
    DOC.write_text(f"{head}{BEGIN}\n{text}\n{END}{rest.partition(END)[2]}")


def run(write: bool) -> int:
    with tempfile.TemporaryDirectory(prefix="login-pipeline-faults-") as folder:
        results = Path(folder) / "faults.json"
        env = {**os.environ, "FAULTS_RESULTS": str(results)}
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "tests/test_faults.py"]
        outcome = subprocess.run(command, cwd=ROOT, env=env, check=False).returncode
        if not results.exists():
            print("no fault scenario finished; nothing to write", file=sys.stderr)
            return outcome or 1
        text = table(json.loads(results.read_text()))
    print(text)
    if write and outcome == 0:
        write_docs(text)
        print(f"wrote {DOC.relative_to(ROOT)}")
    elif write:
        print("a scenario failed: docs left as they were", file=sys.stderr)
    return outcome
