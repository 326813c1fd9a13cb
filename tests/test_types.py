"""mypy's checks (pyproject's [tool.mypy], strict) over the application and the tests, as part
of the test command, beside ruff's (tests/test_lint.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.compiled import COMPILED_MODULES, MYPYC_ARGS

REPO_ROOT = Path(__file__).resolve().parent.parent
CHECKED = ("sip", "gateway", "webrtc", "tests")


def test_mypy_is_clean() -> None:
    # In a subprocess, as a developer runs it: mypy reads pyproject.toml from the working
    # directory, and its incremental cache (.mypy_cache) makes the next run quick.
    completed = subprocess.run(
        [sys.executable, "-m", "mypy", *CHECKED], cwd=REPO_ROOT, capture_output=True, text=True,
    )
    assert completed.returncode == 0, completed.stdout[-8000:] + completed.stderr[-2000:]


def test_the_compiled_build_does_not_read_the_strict_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # setup.py hands MYPYC_ARGS to mypyc, which would otherwise read [tool.mypy] from the
    # directory the build runs in (gateway/compiled.py says why it must not).
    from mypy.main import process_options

    monkeypatch.chdir(REPO_ROOT)
    _, developer = process_options(list(CHECKED))
    assert developer.config_file is not None and developer.warn_return_any
    _, build = process_options([*MYPYC_ARGS, *COMPILED_MODULES])
    assert not build.config_file  # "": none read
    assert not build.warn_return_any and not build.warn_unused_ignores
