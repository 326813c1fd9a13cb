"""The installed product, as a newcomer gets it: the tree copied cleanly (what git tracks, plus
new files it does not ignore), installed with the README's `bash deploy/install.sh` into a
brand-new virtualenv, and `ws2sip run` started from that virtualenv in a directory outside the
tree, so that nothing is imported from the sources. The web phone it serves then calls a pjsua2
phone, and each side hears the other's tone (found by FFT).

Three installs: compiled (the default), WS2SIP_PURE_PYTHON=1, and one whose C compiler fails
(CC=/bin/false), which must still install and run, as pure Python, saying so.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.browser.test_browser_to_phone import BROWSER_TONE, PHONE_TONE, assert_both_hear
from tests.browser.webphone import WebPhone, launch_private_browser
from tests.fixtures.gateway import REPO_ROOT, GatewayProcess, start_gateway
from tests.support.browser import write_browser_tone
from tests.support.healthz import gateway_http_url
from tests.support.pjsua_phone import registered_phone

INSTALL_TIMEOUT = 900  # a compiled install builds 34 modules with mypyc on 2 cores
# The install, then a call; pyproject's 120 s per test is for tests that install nothing.
pytestmark = pytest.mark.timeout(INSTALL_TIMEOUT + 180)
PURE_PYTHON_LINE = "ws2sip runs as pure Python"
# The variables a developer's shell may carry that would make the install use something other
# than what a newcomer has.
LEAKY_VARIABLES = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PIP_REQUIRE_VIRTUALENV")


def copy_tree_cleanly(destination: Path) -> Path:
    """The files git tracks, and new ones it does not ignore, as they are in the work tree."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT, check=True, capture_output=True,
    ).stdout.decode().split("\0")
    for relative in filter(None, listed):
        source = REPO_ROOT / relative
        if source.is_file():  # a tracked file deleted in the work tree is not copied
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def readme_install(tmp: Path, env: Mapping[str, str] = {}) -> tuple[Path, str]:
    """`bash deploy/install.sh VENV` in a clean copy; returns the venv and the install's output."""
    source = copy_tree_cleanly(tmp / "src")
    venv = tmp / "venv"
    environment = {k: v for k, v in os.environ.items() if k not in LEAKY_VARIABLES}
    completed = subprocess.run(
        ["bash", "deploy/install.sh", str(venv)], cwd=source, env={**environment, **env},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-6000:]
    return venv, output


def installed_extensions(venv: Path) -> list[str]:
    """The compiled files the ws2sip distribution installed (its wheel's RECORD)."""
    listing = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; "
         "print('\\n'.join(str(f) for f in m.files('ws2sip') if str(f).endswith('.so')))"],
        check=True, capture_output=True, text=True,
    ).stdout
    return listing.split()


async def start_installed_gateway(venv: Path, workdir: Path) -> GatewayProcess:
    workdir.mkdir(exist_ok=True)
    return await start_gateway(
        workdir, users={"alice": secrets.token_urlsafe(12), "bob": secrets.token_urlsafe(12)},
        transports=("udp", "ws"), command=(str(venv / "bin" / "ws2sip"),), cwd=workdir,
    )


def assert_runs_from(venv: Path, gateway: GatewayProcess) -> None:
    """The gateway imported its packages from the venv, not from the source tree."""
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import gateway, sip, webrtc; "
         "print(gateway.__file__, sip.__file__, webrtc.__file__)"],
        cwd=gateway.cwd, check=True, capture_output=True, text=True,
    ).stdout
    assert str(REPO_ROOT) not in where and str(venv) in where, where


async def call_browser_to_phone(gateway: GatewayProcess, tmp_path: Path) -> None:
    """The web phone the installed gateway serves calls a pjsua2 phone; both hear each other."""
    tone = write_browser_tone(tmp_path / "browser.wav", BROWSER_TONE)
    async with registered_phone(gateway, "bob", PHONE_TONE) as phone, \
            launch_private_browser(tone, name="installed") as browser:
        web = await WebPhone.open(browser, gateway_http_url(gateway), "alice")
        await web.sign_in_and_wait("alice", gateway.users["alice"])
        await web.call("bob")
        await phone.wait_for("incoming_call", 15)
        await phone.answer(200)
        assert await web.wait_call_state("active") == "In call with bob"
        await phone.wait_for("call_state", 15, state="CONFIRMED")
        await assert_both_hear(web, phone, tmp_path / "phone-heard.wav")
        await phone.hangup()
        assert await web.wait_call_state("idle") == "bob hung up"


async def test_compiled_install_serves_a_call_with_two_way_audio(tmp_path: Path) -> None:
    venv, output = await asyncio.to_thread(readme_install, tmp_path)
    assert "pure Python" not in output, output[-3000:]
    assert "compiled (mypyc signalling and media paths, C relay path)" in output, output[-3000:]
    assert "webrtc/_relaypath" in " ".join(installed_extensions(venv))
    gateway = await start_installed_gateway(venv, tmp_path / "run")
    try:
        assert_runs_from(venv, gateway)
        await call_browser_to_phone(gateway, tmp_path)
        assert PURE_PYTHON_LINE not in gateway.log_text()
        assert "Traceback" not in gateway.log_text(), gateway.log_text()[-4000:]
    finally:
        await gateway.stop()


async def test_pure_python_install_serves_the_same_call(tmp_path: Path) -> None:
    venv, output = await asyncio.to_thread(readme_install, tmp_path, {"WS2SIP_PURE_PYTHON": "1"})
    assert "WS2SIP_PURE_PYTHON=1: installing as pure Python" in output, output[-3000:]
    assert installed_extensions(venv) == [], "a pure-Python install compiled something"
    gateway = await start_installed_gateway(venv, tmp_path / "run")
    try:
        assert_runs_from(venv, gateway)
        assert PURE_PYTHON_LINE in gateway.log_text()
        await call_browser_to_phone(gateway, tmp_path)
        assert "Traceback" not in gateway.log_text(), gateway.log_text()[-4000:]
    finally:
        await gateway.stop()


async def test_install_without_a_working_compiler_runs_as_pure_python(tmp_path: Path) -> None:
    venv, output = await asyncio.to_thread(readme_install, tmp_path, {"CC": "/bin/false"})
    assert "no working C compiler" in output, output[-3000:]
    assert installed_extensions(venv) == []
    assert "as pure Python" in output  # the selfcheck's summary says how it runs
    gateway = await start_installed_gateway(venv, tmp_path / "run")
    try:
        assert_runs_from(venv, gateway)
        log = gateway.log_text()
        assert PURE_PYTHON_LINE in log and "no C compiler at install time" in log, log[-3000:]
        async with registered_phone(gateway, "bob", PHONE_TONE):
            pass  # registered: the pure-Python registrar answered 200
    finally:
        await gateway.stop()
