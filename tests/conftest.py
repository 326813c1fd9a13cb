"""Fixtures live in tests/fixtures/, one module per real component the tests start."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import sip

pytest_plugins = [
    "tests.fixtures.redis_server",
    "tests.fixtures.gateway",
]

REPO_ROOT = Path(__file__).resolve().parent.parent


def _stale_compiled_modules() -> list[str]:
    """Compiled parser modules older than their source: the tests would run old code."""
    stale = []
    for source in sorted((REPO_ROOT / "sip").glob("*.py")):
        module = importlib.import_module(f"sip.{source.stem}")
        loaded = Path(module.__file__ or source)
        if loaded.suffix != ".py" and loaded.stat().st_mtime < source.stat().st_mtime:
            stale.append(source.name)
    return stale


def pytest_configure(config: pytest.Config) -> None:
    stale = _stale_compiled_modules()
    if stale:
        pytest.exit(f"compiled modules older than {', '.join(stale)}: rebuild them with "
                    f"`bash tests/bootstrap.sh` (or `pip install -e .`)", returncode=4)


def pytest_report_header() -> str:
    return f"sip parser: {'compiled by mypyc' if sip.parser_is_compiled() else 'pure Python'}"
