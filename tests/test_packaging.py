"""The install's own files agree with each other: what builds ws2sip, what the locks pin, and
the commands the README gives and CI runs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def pins(lock: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for name, version in re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", lock.read_text(), re.M):
        found.setdefault(name.lower(), set()).add(version)
    return found


def test_build_requirements_keep_every_runtime_dependency() -> None:
    # mypyc compiles against the runtime libraries' types (setup.py): an isolated build that
    # lacks one fails, and one that types it as Any would miscompile.
    build = set(PYPROJECT["build-system"]["requires"])
    missing = [dep for dep in PYPROJECT["project"]["dependencies"] if dep.split("#")[0].strip()
               not in build]
    assert not missing, f"add to [build-system] requires: {missing}"


def test_runtime_lock_is_the_test_lock_without_the_test_extra() -> None:
    runtime = pins(REPO_ROOT / "deploy" / "requirements.lock")
    test = pins(REPO_ROOT / "tests" / "requirements.lock")
    differing = {name: (versions, test.get(name)) for name, versions in runtime.items()
                 if test.get(name) != versions}
    assert not differing, f"the locks disagree (runtime, test): {differing}"
    for requirement in ("mypy", "setuptools"):  # --no-build-isolation builds with these
        assert requirement in runtime


def test_every_lock_entry_has_hashes() -> None:
    for lock in ("deploy/requirements.lock", "tests/requirements.lock"):
        entries = re.split(r"\n(?=[A-Za-z])", (REPO_ROOT / lock).read_text())
        unhashed = [entry.split()[0] for entry in entries
                    if re.match(r"[A-Za-z]", entry) and "--hash=sha256:" not in entry]
        assert not unhashed, f"{lock}: no hashes for {unhashed}"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    commands = re.findall(r"```sh\n(.+?)\n```", readme)
    test_command = "bash tests/bootstrap.sh && .venv-test/bin/python -m pytest"
    assert test_command in commands
    assert "bash deploy/install.sh && .venv/bin/ws2sip run --domain localhost" in commands
    ci_lines = [line for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines()
                if line and not line.startswith(("#", "set ", "cd "))]
    assert ci_lines == [test_command]


def test_a_library_missing_at_build_time_fails_the_type_check_naming_it(tmp_path: Path) -> None:
    # What broke fresh installs: mypyc typed a missing aioice as Any and compiled
    # MediaFirstProtocol(StunProtocol) with a wrong layout. With setup.py's own options and no
    # installed packages in sight, the check must fail and name the libraries.
    from mypy import api

    from gateway.compiled import COMPILED_MODULES, MYPYC_ARGS

    sources = [str(REPO_ROOT / path) for path in COMPILED_MODULES]
    stdout, _, status = api.run([*MYPYC_ARGS, "--no-site-packages", "--cache-dir",
                                 str(tmp_path), *sources])
    assert status != 0
    for library in ("aioice", "pylibsrtp"):
        assert f'module named "{library}' in stdout, stdout[-3000:]
