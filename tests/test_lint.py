"""ruff's checks (pyproject's [tool.ruff]) over the whole tree, as part of the test command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_ruff_is_clean() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=REPO_ROOT,
        capture_output=True, text=True,
    )
    assert completed.returncode == 0, completed.stdout[-6000:] + completed.stderr[-2000:]
