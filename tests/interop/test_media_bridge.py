"""Browser ⇄ phone calls through the gateway's media anchor, proven by what each side hears.

The browser is aiortc's RTCPeerConnection speaking SIP over WebSocket (ICE, DTLS-SRTP,
rtcp-mux, Opus first, like Chrome); the phone is a pjsua2 process speaking plain RTP over UDP.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest

from sip.message import Request
from tests.fixtures.gateway import GatewayProcess
from tests.support.audio import assert_hears, read_wav_pcm
from tests.support.pjsua_phone import PjsuaPhone
from tests.support.ws_sip import WsSipUa
from tests.webrtc.browser_peer import BrowserPeer

BROWSER_TONE = 440.0
PHONE_TONE = 1000.0
LISTEN_SECONDS = 2.5


def gateway_udp_sockets(gateway: GatewayProcess) -> int:
    """UDP sockets the gateway process holds (SIP listener + media ports)."""
    assert gateway.process is not None
    inodes = set()
    fd_dir = Path(f"/proc/{gateway.process.pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        match = re.fullmatch(r"socket:\[(\d+)\]", target)
        if match:
            inodes.add(match[1])
    count = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with open(table) as lines:
            next(lines)
            count += sum(1 for line in lines if line.split()[9] in inodes)
    return count


async def registered_pair(
    gateway: GatewayProcess, tmp_path: Path, *, phone_codecs: list[str] | None = None
) -> tuple[WsSipUa, PjsuaPhone]:
    browser = await WsSipUa.connect(gateway.ws_url, "alice", gateway.users["alice"],
                                    domain=gateway.domain)
    assert (await browser.register()).status == 200
    phone = await PjsuaPhone.start("bridge-bob")
    if phone_codecs:
        await phone.set_codecs(phone_codecs)
    registered = await phone.register("127.0.0.1", gateway.port("udp"), "bob",
                                      gateway.users["bob"], gateway.domain)
    assert registered["code"] == 200
    await phone.play_tone(PHONE_TONE)
    await phone.record(tmp_path / "phone-heard.wav")
    return browser, phone


async def assert_both_hear(browser_peer: BrowserPeer, phone: PjsuaPhone, tmp_path: Path) -> None:
    browser_peer.clear()
    await asyncio.sleep(LISTEN_SECONDS)
    assert_hears(browser_peer.heard(), browser_peer.rate, PHONE_TONE)
    await phone.stop_recording()
    samples, rate = read_wav_pcm(tmp_path / "phone-heard.wav")
    assert_hears(samples[int(rate * 0.5):], rate, BROWSER_TONE)


@pytest.mark.parametrize("phone_codecs", [None, ["PCMU"]], ids=["phone-defaults", "pcmu-only"])
async def test_browser_calls_phone_and_both_hear(
    gateway: GatewayProcess, tmp_path: Path, phone_codecs: list[str] | None
) -> None:
    sockets_before = gateway_udp_sockets(gateway)
    browser, phone = await registered_pair(gateway, tmp_path, phone_codecs=phone_codecs)
    peer = BrowserPeer(BROWSER_TONE)
    try:
        await phone.set_auto_answer(200)
        response, dialog = await browser.call(f"sip:bob@{gateway.domain}", await peer.offer())
        assert response.status == 200, response
        assert dialog is not None
        assert "RTP/AVP" not in dialog.remote_sdp and "fingerprint" in dialog.remote_sdp
        await peer.accept_answer(dialog.remote_sdp)
        await assert_both_hear(peer, phone, tmp_path)
        assert gateway_udp_sockets(gateway) > sockets_before
        await phone.hangup()
        await browser.take_bye()
        # The browser's WebSocket stays open: only the BYE may free the media ports.
        await assert_media_ports_freed(gateway, sockets_before, "after BYE")
    finally:
        await peer.close()
        await browser.close()
        await phone.stop()


async def assert_media_ports_freed(gateway: GatewayProcess, baseline: int, when: str) -> None:
    for _ in range(20):
        if gateway_udp_sockets(gateway) == baseline:
            return
        await asyncio.sleep(0.25)
    assert gateway_udp_sockets(gateway) == baseline, f"media ports left open {when}"


async def test_browser_that_loses_its_websocket_frees_the_call_media(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    sockets_before = gateway_udp_sockets(gateway)
    browser, phone = await registered_pair(gateway, tmp_path)
    peer = BrowserPeer(BROWSER_TONE)
    try:
        await phone.set_auto_answer(200)
        response, dialog = await browser.call(f"sip:bob@{gateway.domain}", await peer.offer())
        assert response.status == 200 and dialog is not None
        await peer.accept_answer(dialog.remote_sdp)
        assert gateway_udp_sockets(gateway) > sockets_before
        await browser.close()  # the tab is gone: no BYE, only the transport loss
        await assert_media_ports_freed(gateway, sockets_before, "after the WebSocket closed")
    finally:
        await peer.close()
        await browser.close()
        await phone.stop()


@pytest.mark.parametrize("late_offer", [False, True], ids=["early-offer", "late-offer"])
async def test_phone_calls_browser_and_both_hear(
    gateway: GatewayProcess, tmp_path: Path, late_offer: bool
) -> None:
    browser, phone = await registered_pair(gateway, tmp_path)
    peer = BrowserPeer(BROWSER_TONE)
    try:
        await phone.call(f"sip:alice@{gateway.domain}", late_offer=late_offer)
        invite = await browser.next_request("INVITE")
        if late_offer:
            _, dialog = await browser.answer(await peer.offer(), invite)
            ack = await _wait_for_ack(browser, invite.call_id)
            await peer.accept_answer(ack.body.decode())
        else:
            offer = invite.body.decode()
            assert "UDP/TLS/RTP/SAVPF" in offer and "a=fingerprint" in offer
            _, dialog = await browser.answer(await peer.answer(offer), invite)
        await phone.wait_for("call_state", 10, state="CONFIRMED")
        await assert_both_hear(peer, phone, tmp_path)
        response = await browser.hang_up(dialog)
        assert response.status == 200
        await phone.wait_for("call_state", 10, state="DISCONNECTED")
    finally:
        await peer.close()
        await browser.close()
        await phone.stop()


async def test_opus_only_browser_and_pcmu_only_phone_are_transcoded(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    browser, phone = await registered_pair(gateway, tmp_path, phone_codecs=["PCMU"])
    peer = BrowserPeer(BROWSER_TONE, codecs=["audio/opus"])
    try:
        await phone.set_auto_answer(200)
        offer = await peer.offer()
        assert "PCMU" not in offer
        response, dialog = await browser.call(f"sip:bob@{gateway.domain}", offer)
        assert response.status == 200 and dialog is not None
        assert "opus" in dialog.remote_sdp.lower()
        await peer.accept_answer(dialog.remote_sdp)
        await assert_both_hear(peer, phone, tmp_path)
        await browser.hang_up(dialog)
    finally:
        await peer.close()
        await browser.close()
        await phone.stop()


@pytest.mark.parametrize(
    "phone_codecs", [["PCMU"], ["G722"]], ids=["relayed-pcmu", "transcoded-g722"]
)
async def test_hold_and_resume_through_reinvite(
    gateway: GatewayProcess, tmp_path: Path, phone_codecs: list[str]
) -> None:
    browser, phone = await registered_pair(gateway, tmp_path, phone_codecs=phone_codecs)
    peer = BrowserPeer(BROWSER_TONE)
    try:
        await phone.set_auto_answer(200)
        offer = await peer.offer()
        response, dialog = await browser.call(f"sip:bob@{gateway.domain}", offer)
        assert response.status == 200 and dialog is not None
        await peer.accept_answer(dialog.remote_sdp)
        await asyncio.sleep(1.0)
        held = await browser.reinvite(dialog, offer.replace("a=sendrecv", "a=sendonly"))
        assert held.status == 200
        assert re.search(r"a=(recvonly|inactive)", held.body.decode()), held.body.decode()
        resumed = await browser.reinvite(dialog, offer)
        assert resumed.status == 200
        assert "a=sendrecv" in resumed.body.decode()
        # The anchor keeps its ICE and DTLS identity and its ports across the re-INVITEs.
        for line in ("a=ice-ufrag:", "a=fingerprint:", "m=audio "):
            assert _sdp_line(resumed.body.decode(), line) == _sdp_line(dialog.remote_sdp, line)
        # What the phone hears after the resume. (aiortc cannot renegotiate a receiver back
        # from sendonly, so the browser's side of hold/resume is proven in real Chromium:
        # tests/browser/test_browser_to_phone.py::test_hold_mute_and_resume_with_a_sip_phone.)
        await phone.stop_recording()
        await phone.record(tmp_path / "after-resume.wav")
        await asyncio.sleep(LISTEN_SECONDS)
        await phone.stop_recording()
        samples, rate = read_wav_pcm(tmp_path / "after-resume.wav")
        assert_hears(samples[int(rate * 0.5):], rate, BROWSER_TONE)
        await browser.hang_up(dialog)
    finally:
        await peer.close()
        await browser.close()
        await phone.stop()


async def _wait_for_ack(browser: WsSipUa, call_id: str, timeout: float = 10.0) -> Request:
    async def find() -> Request:
        while True:
            for request in browser.requests:
                if request.method == "ACK" and request.call_id == call_id:
                    return request
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(find(), timeout)


def _sdp_line(sdp: str, prefix: str) -> str:
    return next(line for line in sdp.splitlines() if line.startswith(prefix))
