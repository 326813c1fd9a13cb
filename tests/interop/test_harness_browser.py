"""The browser harness: two real Chromium processes, each with its own fake microphone tone,
call each other with plain WebRTC (signalling through page.evaluate), and each must hear the
other's tone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.async_api import Page

from tests.support.browser import (
    JS_DIR,
    StaticServer,
    dominant_frequency,
    launch_browser,
    loopback_only,
    peer_connection_stats,
    write_browser_tone,
)

ALICE_TONE = 440.0
BOB_TONE = 1000.0
# One AnalyserNode bin is 48000 / 8192 ≈ 5.9 Hz wide.
TOLERANCE_HZ = 12.0

PREPARE_PEER = """async () => {
  const microphone = await navigator.mediaDevices.getUserMedia({ audio: true });
  const pc = new RTCPeerConnection();
  microphone.getTracks().forEach((track) => pc.addTrack(track, microphone));
  window.remoteStream = new MediaStream();
  pc.ontrack = (event) => window.remoteStream.addTrack(event.track);
  window.pc = pc;
}"""
MAKE_OFFER = """async () => {
  await window.pc.setLocalDescription(await window.pc.createOffer());
  await window.ws2sipMedia.gatheringComplete(window.pc);
  return window.pc.localDescription.sdp;
}"""
MAKE_ANSWER = """async (offer) => {
  await window.pc.setRemoteDescription({ type: "offer", sdp: offer });
  await window.pc.setLocalDescription(await window.pc.createAnswer());
  await window.ws2sipMedia.gatheringComplete(window.pc);
  return window.pc.localDescription.sdp;
}"""
TAKE_ANSWER = """async (answer) => {
  await window.pc.setRemoteDescription({ type: "answer", sdp: answer });
}"""
CONNECTED = "window.pc.connectionState === 'connected'"


def installed_version(package: str) -> str:
    manifest = JS_DIR / "node_modules" / package / "package.json"
    return json.loads(manifest.read_text())["version"]


async def connect(caller: Page, callee: Page) -> None:
    await caller.evaluate(PREPARE_PEER)
    await callee.evaluate(PREPARE_PEER)
    offer = loopback_only(await caller.evaluate(MAKE_OFFER))
    answer = loopback_only(await callee.evaluate(MAKE_ANSWER, offer))
    await caller.evaluate(TAKE_ANSWER, answer)
    await caller.wait_for_function(CONNECTED, timeout=15_000)
    await callee.wait_for_function(CONNECTED, timeout=15_000)


async def test_two_browsers_hear_each_others_tone(tmp_path: Path) -> None:
    alice_tone = write_browser_tone(tmp_path / "alice.wav", ALICE_TONE)
    bob_tone = write_browser_tone(tmp_path / "bob.wav", BOB_TONE)
    async with (
        StaticServer() as site,
        launch_browser(alice_tone, name="alice") as alice,
        launch_browser(bob_tone, name="bob") as bob,
    ):
        alice_page = await alice.open(site.url("webrtc.html"))
        bob_page = await bob.open(site.url("webrtc.html"))
        await connect(alice_page, bob_page)

        alice_heard = await dominant_frequency(alice_page, "window.remoteStream")
        bob_heard = await dominant_frequency(bob_page, "window.remoteStream")
        assert alice_heard == pytest.approx(BOB_TONE, abs=TOLERANCE_HZ), alice.console
        assert bob_heard == pytest.approx(ALICE_TONE, abs=TOLERANCE_HZ), bob.console

        stats = await peer_connection_stats(alice_page, "window.pc")
        assert stats["iceConnectionState"] in ("connected", "completed")
        assert stats["dtlsState"] == "connected"
        assert stats["packetsReceived"] > 0 and stats["packetsSent"] > 0
        assert stats["inboundCodec"] == "audio/opus"
        assert stats["selectedPair"]["remote"].rsplit(":", 1)[0].split("/")[0] in (
            "127.0.0.1", "::1"), stats


async def test_pages_load_both_sip_stacks_and_only_test_files_are_served(tmp_path: Path) -> None:
    tone = write_browser_tone(tmp_path / "tone.wav", ALICE_TONE)
    async with StaticServer() as site, launch_browser(tone, name="stacks") as browser:
        page = await browser.open(site.url("webrtc.html"))
        stacks = await page.evaluate(
            "() => [window.JsSIP.version, typeof window.JsSIP.UA, typeof window.SIP.UserAgent]"
        )
        assert stacks == [installed_version("jssip"), "function", "function"]
        response = await page.goto(site.url("package.json"))
        assert response is not None and response.status == 404


async def test_silence_is_not_mistaken_for_a_tone(tmp_path: Path) -> None:
    tone = write_browser_tone(tmp_path / "tone.wav", ALICE_TONE)
    async with StaticServer() as site, launch_browser(tone, name="silence") as browser:
        page = await browser.open(site.url("webrtc.html"))
        heard = await page.evaluate("""async () => {
          const context = new AudioContext();
          const silent = context.createMediaStreamDestination().stream;
          return window.ws2sipMedia.dominantFrequency(silent, 500);
        }""")
        assert heard == 0
