"""Scenarios 1 and 2: the web phone (Chromium, mDNS host candidates) and a pjsua2 SIP phone on
UDP call each other through the gateway's media anchor. Each side must hear the other's tone:
the browser through an AnalyserNode on the remote stream, the phone in its recording."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.browser.webphone import WebPhone, launch_private_browser
from tests.fixtures.gateway import GatewayProcess
from tests.support.audio import assert_hears, dominant_frequency, read_wav_pcm
from tests.support.browser import BrowserSession, write_browser_tone
from tests.support.healthz import gateway_http_url
from tests.support.pjsua_phone import PjsuaPhone, registered_phone

BROWSER_TONE = 440.0
PHONE_TONE = 1000.0
TOLERANCE_HZ = 12.0  # one AnalyserNode bin is 48000 / 8192 ≈ 5.9 Hz
LISTEN_SECONDS = 2.5
SETTLE_SECONDS = 0.5  # the start of a recording may hold silence before media flows


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserSession]:
    tone = write_browser_tone(tmp_path / "browser.wav", BROWSER_TONE)
    async with launch_private_browser(tone, name="to-phone") as session:
        yield session


@pytest.fixture
async def phone(gateway: GatewayProcess, tmp_path: Path) -> AsyncIterator[PjsuaPhone]:
    async with registered_phone(gateway, "bob", PHONE_TONE) as phone:
        yield phone


async def assert_both_hear(web: WebPhone, phone: PjsuaPhone, recording: Path) -> None:
    await phone.record(recording)
    heard = await web.heard_frequency(int(LISTEN_SECONDS * 1000))
    await phone.stop_recording()
    stats = await web.stats()
    assert heard == pytest.approx(PHONE_TONE, abs=TOLERANCE_HZ), (stats, web.console())
    samples, rate = read_wav_pcm(recording)
    assert_hears(samples[int(rate * SETTLE_SECONDS):], rate, BROWSER_TONE)


async def test_web_phone_calls_a_sip_phone_which_hangs_up(
    gateway: GatewayProcess, browser: BrowserSession, phone: PjsuaPhone, tmp_path: Path,
) -> None:
    web = await WebPhone.open(browser, gateway_http_url(gateway), "alice")
    await web.sign_in_and_wait("alice", gateway.users["alice"])

    await web.call("bob")
    incoming = await phone.wait_for("incoming_call", 15)
    assert "alice" in incoming["from"]
    await phone.answer(180)
    assert await web.wait_call_state("ringing") == "Ringing bob…"
    await web.screenshot("20-ringing-a-phone")
    await phone.answer(200)
    assert await web.wait_call_state("active") == "In call with bob"
    await phone.wait_for("call_state", 15, state="CONFIRMED")

    await assert_both_hear(web, phone, tmp_path / "phone-heard.wav")
    quality = await web.wait_quality_line()
    assert int(quality["packetsReceived"]) > 0, quality
    # No TURN server here: the browser reaches the gateway's media port itself.
    assert quality["path"] == "direct UDP", quality
    assert quality["text"].endswith(" · via direct UDP"), quality

    # The keypad sends RFC 4733 events that reach the phone as digits.
    await web.press_keys("4#")
    assert (await phone.wait_for("dtmf", 10))["digit"] == "4"
    assert (await phone.wait_for("dtmf", 10))["digit"] == "#"
    await web.screenshot("21-in-call-with-a-phone")

    await phone.hangup()
    assert await web.wait_call_state("idle") == "bob hung up"
    assert await web.page.is_hidden("#error")


async def test_sip_phone_calls_the_web_phone_which_answers_and_hangs_up(
    gateway: GatewayProcess, browser: BrowserSession, phone: PjsuaPhone, tmp_path: Path,
) -> None:
    web = await WebPhone.open(browser, gateway_http_url(gateway), "alice")
    await web.sign_in_and_wait("alice", gateway.users["alice"])

    await phone.call(f"sip:alice@{gateway.domain}")
    assert await web.wait_call_state("incoming") == "Incoming call from bob"
    await web.answer()
    assert await web.wait_call_state("active") == "In call with bob"
    await phone.wait_for("call_state", 15, state="CONFIRMED")

    await assert_both_hear(web, phone, tmp_path / "phone-heard.wav")

    await web.hang_up()
    await phone.wait_for("call_state", 15, state="DISCONNECTED")
    assert await web.wait_call_state("idle") == "Call ended"


async def test_hold_mute_and_resume_with_a_sip_phone(
    gateway: GatewayProcess, browser: BrowserSession, phone: PjsuaPhone, tmp_path: Path,
) -> None:
    web = await WebPhone.open(browser, gateway_http_url(gateway), "alice")
    await web.sign_in_and_wait("alice", gateway.users["alice"])
    await phone.set_auto_answer(200)
    await web.call("bob")
    await web.wait_call_state("active")

    await web.page.click("#hold")
    assert await web.wait_call_state("held") == "bob: on hold"
    assert await web.page.get_attribute("#hold", "aria-pressed") == "true"
    await web.screenshot("22-on-hold")
    await web.page.click("#hold")
    assert await web.wait_call_state("active") == "In call with bob"
    await assert_both_hear(web, phone, tmp_path / "after-hold.wav")

    await web.page.click("#mute")
    await web.page.wait_for_selector("#mute[aria-pressed='true']")
    muted = tmp_path / "muted.wav"
    await phone.record(muted)
    await asyncio.sleep(LISTEN_SECONDS)
    await phone.stop_recording()
    samples, rate = read_wav_pcm(muted)
    assert dominant_frequency(samples[int(rate * SETTLE_SECONDS):], rate) != pytest.approx(
        BROWSER_TONE, abs=TOLERANCE_HZ
    ), "the phone still hears the browser's tone while muted"
    await web.page.click("#mute")
    await web.page.wait_for_selector("#mute[aria-pressed='false']")
    await assert_both_hear(web, phone, tmp_path / "unmuted.wav")

    await web.hang_up()
    await phone.wait_for("call_state", 15, state="DISCONNECTED")
