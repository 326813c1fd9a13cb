"""Fixtures live in tests/fixtures/, one module per real component the tests start."""

from __future__ import annotations

from pathlib import Path

import pytest

import sip

pytest_plugins = [
    "tests.fixtures.redis_server",
    "tests.fixtures.gateway",
]

REPO_ROOT = Path(__file__).resolve().parent.parent


def _stale_compiled_modules() -> list[str]:
    """Compiled modules (setup.py: mypyc and the C relay path) older than their source: the
    tests would run old code."""
    stale = []
    for package in ("sip", "gateway", "webrtc"):
        for compiled in sorted((REPO_ROOT / package).rglob("*.so")):
            stem = compiled.name.split(".", 1)[0]
            for source in (compiled.with_name(stem + ".py"), compiled.with_name(stem + ".c")):
                if source.exists() and compiled.stat().st_mtime < source.stat().st_mtime:
                    stale.append(str(source.relative_to(REPO_ROOT)))
    return stale


def _stale_web_phone_bundle() -> list[str]:
    """Web phone sources newer than the bundle the gateway serves (esbuild, npm's build)."""
    bundle = REPO_ROOT / "gateway" / "webphone" / "dist" / "phone.bundle.js"
    if not bundle.exists():
        return []  # the tests that need it say so
    return [str(source.relative_to(REPO_ROOT))
            for source in sorted(bundle.parent.parent.glob("*.js"))
            if source.stat().st_mtime > bundle.stat().st_mtime]


def pytest_configure(config: pytest.Config) -> None:
    stale = _stale_compiled_modules()
    if stale:
        pytest.exit(f"compiled modules older than {', '.join(stale)}: rebuild them with "
                    f"`bash tests/bootstrap.sh` (or `pip install -e .`)", returncode=4)
    stale = _stale_web_phone_bundle()
    if stale:
        pytest.exit(f"the web phone bundle is older than {', '.join(stale)}: rebuild it with "
                    "`bash tests/bootstrap.sh` (or `npm run --prefix gateway/webphone build`)",
                    returncode=4)


def pytest_report_header() -> str:
    return f"sip parser: {'compiled by mypyc' if sip.parser_is_compiled() else 'pure Python'}"
