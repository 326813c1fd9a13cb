"""The gateway registers to a trunk with `register = true`: a SIPp digest registrar checks it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.fixtures.gateway import GatewayFactory, GatewayProcess
from tests.support.sipp import Sipp

TRUNK_USER = "gw-account"
TRUNK_PASSWORD = "trunk-secret"
LOG_WAIT = 10.0


def trunk_config(path: Path, registrar_port: int, password: str) -> Path:
    path.write_text(
        "[[trunks]]\n"
        'name = "pbx"\n'
        f'address = "127.0.0.1:{registrar_port}"\n'
        f'username = "{TRUNK_USER}"\n'
        f'password = "{password}"\n'
        "register = true\n"
    )
    return path


async def wait_for_log(gateway: GatewayProcess, text: str) -> str:
    for _ in range(int(LOG_WAIT / 0.1)):
        log = gateway.log_text()
        if text in log:
            return log
        await asyncio.sleep(0.1)
    raise AssertionError(f"{text!r} not in gateway log {gateway.log_path}")


async def test_gateway_registers_to_the_trunk_with_valid_digest(
    gateway_factory: GatewayFactory, tmp_path: Path,
) -> None:
    registrar = await Sipp.start(
        "registrar_uas.xml", name="trunk-registrar", timeout=20,
        keys={"domain": "127.0.0.1", "user": TRUNK_USER, "password": TRUNK_PASSWORD},
    )
    config = trunk_config(tmp_path / "trunk.toml", registrar.port, TRUNK_PASSWORD)
    gateway = await gateway_factory(transports=("udp",), extra_args=["--config", str(config)])
    checked = await registrar.wait()
    checked.assert_success()
    messages = checked.message_log_path.read_text()
    assert f'Authorization: Digest username="{TRUNK_USER}"' in messages
    assert f"Contact: <sip:{TRUNK_USER}@127.0.0.1:{gateway.udp_port}>" in messages
    log = await wait_for_log(gateway, "trunk pbx: registered as")
    assert "registered as sip:gw-account@127.0.0.1 for 60 s" in log


async def test_refused_credentials_are_logged_once(
    gateway_factory: GatewayFactory, tmp_path: Path,
) -> None:
    registrar = await Sipp.start(
        "registrar_uas.xml", name="trunk-registrar-refusing", timeout=20,
        keys={"domain": "127.0.0.1", "user": TRUNK_USER, "password": TRUNK_PASSWORD},
    )
    config = trunk_config(tmp_path / "trunk.toml", registrar.port, "wrong-password")
    gateway = await gateway_factory(transports=("udp",), extra_args=["--config", str(config)])
    checked = await registrar.wait()
    assert "SIP/2.0 403 Forbidden" in checked.message_log_path.read_text()
    log = await wait_for_log(gateway, "trunk pbx: registration as")
    assert log.count("trunk pbx: registration as") == 1
    assert "403 Forbidden" in log
