"""SIPp exchanging real SIP with a UAS/UAC built on the transport and transaction layers."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sip.resolver import Target
from sip.timers import Timers
from tests.sip.core_peer import CorePeer

SCENARIOS = Path(__file__).parent / "sipp_core"
TRANSPORTS = ["udp", "tcp"]
SIPP_TRANSPORT_FLAG = {"udp": "u1", "tcp": "t1"}


def free_port() -> int:
    """A port free for both UDP and TCP on loopback (SIPp binds both kinds)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP")


async def run_sipp(scenario: str, transport: str, *extra: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        "sipp", *extra, "-sf", str(SCENARIOS / scenario), "-t", SIPP_TRANSPORT_FLAG[transport],
        "-i", "127.0.0.1", "-p", str(free_port()), "-mp", str(free_port()),
        "-m", "1", "-timeout", "30s", "-timeout_error", "-nostdin",
        "-trace_err", "-error_file", "/dev/stderr",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, output.decode("utf-8", "replace")[-4000:]


# Standard T1/T2 (the SIPp scenarios check the 500 ms retransmission) but short lingering
# timers, so the leak check after each call does not wait 32 s.
LINGER = Timers(t4=1.0, timer_d=1.0, timer_j=1.0, timer_l=3.0, timer_m=3.0)


@pytest.fixture
async def core() -> AsyncIterator[CorePeer]:
    peer = CorePeer(LINGER)
    await peer.start()
    yield peer
    await peer.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_sipp_uac_calls_core_uas(core: CorePeer, transport: str) -> None:
    host, port = core.address(transport)
    code, output = await run_sipp("uac_call.xml", transport, f"{host}:{port}")
    assert code == 0, output
    methods = [request.method for request in core.requests]
    assert methods == ["INVITE", "ACK", "BYE"]
    await _until_no_transactions(core)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_core_uac_calls_sipp_uas(core: CorePeer, transport: str) -> None:
    port = free_port()
    sipp = asyncio.create_task(_sipp_uas("uas_answer.xml", transport, port))
    await _until_listening(transport, port)
    result = await core.call(Target(transport, "127.0.0.1", port))
    code, output = await sipp
    assert code == 0, output
    assert result.statuses[-2:] == [180, 200]
    assert result.bye_status == 200
    await _until_no_transactions(core)


async def test_core_uas_retransmits_2xx_until_ack_over_udp(core: CorePeer) -> None:
    host, port = core.address("udp")
    code, output = await run_sipp(
        "uac_invite_2xx_retransmission.xml", "udp", "-nr", f"{host}:{port}"
    )
    assert code == 0, output
    invite_transaction = core.server_transactions[0]
    assert invite_transaction.acked
    await _until_no_transactions(core)


async def test_core_uac_retransmits_non_invite_over_udp(core: CorePeer) -> None:
    port = free_port()
    sipp = asyncio.create_task(_sipp_uas("uas_non_invite_retransmission.xml", "udp", port, "-nr"))
    await _until_listening("udp", port)
    target = Target("udp", "127.0.0.1", port)
    responses, _ = await core.send(core.new_request("OPTIONS", target), target)
    code, output = await sipp
    assert code == 0, output
    assert [response.status for response in responses] == [200]


async def _sipp_uas(scenario: str, transport: str, port: int, *extra: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        "sipp", *extra, "-sf", str(SCENARIOS / scenario), "-t", SIPP_TRANSPORT_FLAG[transport],
        "-i", "127.0.0.1", "-p", str(port), "-mp", str(free_port()),
        "-m", "1", "-timeout", "30s", "-timeout_error", "-nostdin",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, output.decode("utf-8", "replace")[-4000:]


async def _until_listening(transport: str, port: int) -> None:
    """Wait (bounded) until SIPp has bound its port, so the first request is not lost."""
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    for _ in range(200):
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return
        await asyncio.sleep(0.025)
    raise AssertionError(f"SIPp never listened on {transport} port {port}")


async def _until_no_transactions(core: CorePeer) -> None:
    """Transactions linger (timers D, J, K, I) on UDP; the tables must empty once they run."""
    for _ in range(400):
        if core.transactions.transaction_count == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"transactions leaked: {core.transactions.transaction_count}")
