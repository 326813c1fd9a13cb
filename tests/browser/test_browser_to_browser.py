"""Scenario 3: two web phones (two Chromium processes, mDNS host candidates on) call each other
through the gateway with audio and video; each hears the other's tone and sees its picture."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser.webphone import WebPhone, launch_private_browser
from tests.fixtures.gateway import GatewayProcess
from tests.support.browser import write_browser_tone
from tests.support.healthz import gateway_http_url

ALICE_TONE = 440.0
BOB_TONE = 1000.0
TOLERANCE_HZ = 12.0  # one AnalyserNode bin is 48000 / 8192 ≈ 5.9 Hz

VIDEO_RECEIVED = """() => {
  const video = document.getElementById('remote-video');
  return video.videoWidth > 0 && !document.getElementById('videos').hidden;
}"""
FRAMES_DECODED = """async () => {
  const report = await window.ws2sipPhone.peerConnection.getStats();
  let frames = 0;
  report.forEach((entry) => {
    if (entry.type === 'inbound-rtp' && entry.kind === 'video') frames += entry.framesDecoded ?? 0;
  });
  return frames;
}"""


async def test_two_web_phones_hear_and_see_each_other(
    gateway: GatewayProcess, tmp_path: Path,
) -> None:
    base_url = gateway_http_url(gateway)
    async with (
        launch_private_browser(write_browser_tone(tmp_path / "a.wav", ALICE_TONE),
                               name="alice") as alice_browser,
        launch_private_browser(write_browser_tone(tmp_path / "b.wav", BOB_TONE),
                               name="bob") as bob_browser,
    ):
        alice = await WebPhone.open(alice_browser, base_url, "alice")
        bob = await WebPhone.open(bob_browser, base_url, "bob")
        await alice.screenshot("01-signed-out")
        await alice.sign_in_and_wait("alice", gateway.users["alice"])
        await bob.sign_in_and_wait("bob", gateway.users["bob"])
        assert await alice.registration_text() == "Registered as alice@example.test"
        await alice.screenshot("02-registered")

        await alice.call("bob", video=True)
        assert await bob.wait_call_state("incoming") == "Incoming call from alice"
        await bob.screenshot("03-incoming-call")
        await bob.answer(video=True)
        assert await alice.wait_call_state("active") == "In call with bob"
        assert await bob.wait_call_state("active") == "In call with alice"

        alice_heard = await alice.heard_frequency()
        bob_heard = await bob.heard_frequency()
        assert alice_heard == pytest.approx(BOB_TONE, abs=TOLERANCE_HZ), alice.console()
        assert bob_heard == pytest.approx(ALICE_TONE, abs=TOLERANCE_HZ), bob.console()

        for phone in (alice, bob):
            await phone.page.wait_for_function(VIDEO_RECEIVED, timeout=15_000)
            assert await phone.page.evaluate(FRAMES_DECODED) > 0
            stats = await phone.stats()
            assert stats["dtlsState"] == "connected", stats
            assert stats["inboundCodec"] == "audio/opus", stats
            quality = await phone.wait_quality_line()
            assert quality["text"].startswith("Packets lost "), quality
            assert quality["rttMs"] != "", quality
        await alice.page.wait_for_function(
            "document.getElementById('call-timer').textContent !== '00:00'", timeout=15_000
        )
        await alice.screenshot("04-video-call")

        await alice.hang_up()
        assert await bob.wait_call_state("idle") == "alice hung up"
        assert await alice.wait_call_state("idle") == "Call ended"
        await bob.screenshot("05-after-hang-up")
