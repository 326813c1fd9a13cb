"""Browser ⇄ phone calls through a gateway that relays media in worker processes
(`--media-workers 2`), proven by what each side hears, plus what happens to the workers when
one dies or the gateway stops.

The browser is aiortc's RTCPeerConnection over WebSocket SIP; the phone is pjsua2 over UDP.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.gateway import GatewayFactory, GatewayProcess
from tests.interop.test_media_bridge import (
    BROWSER_TONE,
    assert_both_hear,
    gateway_udp_sockets,
    registered_pair,
)
from tests.support.pjsua_phone import PjsuaPhone
from tests.support.ws_sip import WsSipUa
from tests.webrtc.browser_peer import BrowserPeer

WORKERS = 2


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory) -> GatewayProcess:
    return await gateway_factory(
        users={"alice": secrets.token_urlsafe(12), "bob": secrets.token_urlsafe(12)},
        extra_args=["--media-workers", str(WORKERS)],
    )


def worker_pids(gateway: GatewayProcess) -> list[int]:
    """The gateway's multiprocessing children (its media workers)."""
    assert gateway.process is not None
    return [pid for pid in _processes() if _parent(pid) == gateway.process.pid
            and b"spawn_main" in _cmdline(pid)]


def _processes() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return b""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def udp_sockets(pid: int) -> int:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            match = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(fd))
        except OSError:
            continue
        if match:
            inodes.add(match[1])
    count = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with open(table) as lines:
            next(lines)
            count += sum(1 for line in lines if line.split()[9] in inodes)
    return count


def media_sockets_by_worker(gateway: GatewayProcess) -> dict[int, int]:
    return {pid: udp_sockets(pid) for pid in worker_pids(gateway)}


async def eventually(condition: Callable[[], object], seconds: float, what: str) -> None:
    for _ in range(int(seconds / 0.1)):
        if condition():
            return
        await asyncio.sleep(0.1)
    assert condition(), what


async def browser_calls_phone(
    gateway: GatewayProcess, tmp_path: Path
) -> tuple[WsSipUa, PjsuaPhone, BrowserPeer, object]:
    browser, phone = await registered_pair(gateway, tmp_path)
    peer = BrowserPeer(BROWSER_TONE)
    await phone.set_auto_answer(200)
    response, dialog = await browser.call(f"sip:bob@{gateway.domain}", await peer.offer())
    assert response.status == 200, response
    assert dialog is not None and "fingerprint" in dialog.remote_sdp
    await peer.accept_answer(dialog.remote_sdp)
    return browser, phone, peer, dialog


async def test_browser_calls_phone_through_a_media_worker_and_both_hear(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    assert len(worker_pids(gateway)) == WORKERS
    gateway_sockets = gateway_udp_sockets(gateway)
    browser, phone, peer, dialog = await browser_calls_phone(gateway, tmp_path)
    try:
        await assert_both_hear(peer, phone, tmp_path)
        # The media ports are in one worker, none in the gateway's own process.
        assert sorted(media_sockets_by_worker(gateway).values()) == [0, 3]
        assert gateway_udp_sockets(gateway) == gateway_sockets
        await phone.hangup()
        await browser.take_bye()
        await eventually(lambda: set(media_sockets_by_worker(gateway).values()) == {0}, 5.0,
                         "media ports left open in a worker after BYE")
    finally:
        await peer.close()
        await browser.close()
        await phone.stop()


async def test_phone_calls_browser_through_a_media_worker_and_both_hear(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    browser, phone = await registered_pair(gateway, tmp_path)
    peer = BrowserPeer(BROWSER_TONE)
    try:
        await phone.call(f"sip:alice@{gateway.domain}")
        invite = await browser.next_request("INVITE")
        offer = invite.body.decode()
        assert "UDP/TLS/RTP/SAVPF" in offer and "a=fingerprint" in offer
        _, dialog = await browser.answer(await peer.answer(offer), invite)
        await phone.wait_for("call_state", 10, state="CONFIRMED")
        await assert_both_hear(peer, phone, tmp_path)
        assert (await browser.hang_up(dialog)).status == 200
        await phone.wait_for("call_state", 10, state="DISCONNECTED")
        await eventually(lambda: set(media_sockets_by_worker(gateway).values()) == {0}, 5.0,
                         "media ports left open in a worker after BYE")
    finally:
        await peer.close()
        await browser.close()
        await phone.stop()


async def test_a_killed_media_worker_does_not_stop_the_next_call(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    original = worker_pids(gateway)
    browser, phone, peer, dialog = await browser_calls_phone(gateway, tmp_path)
    try:
        holding = [pid for pid, count in media_sockets_by_worker(gateway).items() if count]
        assert len(holding) == 1
        os.kill(holding[0], signal.SIGKILL)
        # The call whose media died still hangs up cleanly.
        assert (await browser.hang_up(dialog)).status == 200  # type: ignore[arg-type]
        await phone.wait_for("call_state", 10, state="DISCONNECTED")
    finally:
        await peer.close()
        await browser.close()
        await phone.stop()
    await eventually(lambda: len(worker_pids(gateway)) == WORKERS
                     and holding[0] not in worker_pids(gateway), 30.0,
                     "the dead worker was not replaced")
    assert "media worker" in gateway.log_text() and "exited" in gateway.log_text()
    # Both workers idle: the first in line, now the replacement, takes the next call.
    next_dir = tmp_path / "next"
    next_dir.mkdir()
    browser, phone, peer, dialog = await browser_calls_phone(gateway, next_dir)
    try:
        await assert_both_hear(peer, phone, next_dir)
        holding = [pid for pid, count in media_sockets_by_worker(gateway).items() if count]
        assert len(holding) == 1 and holding[0] not in original
        await browser.hang_up(dialog)  # type: ignore[arg-type]
    finally:
        await peer.close()
        await browser.close()
        await phone.stop()


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["stop", "kill"])
async def test_gateway_stop_leaves_no_media_worker_behind(
    gateway: GatewayProcess, tmp_path: Path, stop_signal: signal.Signals
) -> None:
    """SIGTERM stops the workers; even a SIGKILLed gateway's workers see their channel close
    and exit, mid-call, freeing their ports."""
    browser, phone, peer, _ = await browser_calls_phone(gateway, tmp_path)
    try:
        pids = worker_pids(gateway)
        assert len(pids) == WORKERS and sum(udp_sockets(pid) for pid in pids) == 3
        assert gateway.process is not None
        gateway.process.send_signal(stop_signal)
        await gateway.stop()
        await eventually(lambda: not any(alive(pid) for pid in pids), 10.0,
                         f"media workers still running after {stop_signal.name}")
    finally:
        await peer.close()
        await browser.close()
        await phone.stop()
