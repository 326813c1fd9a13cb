"""Issue 17 items 4 and 5 in the web phone: what a softphone user expects, in three Chromium
web phones (alice 440 Hz, bob 700 Hz, carol 1000 Hz) and a PBX behind a trunk.

The PBX is tests.support.voicemail_pbx (MWI and an extension's hint, as Asterisk sends
them). One story, each step judged on the screen and, for calls, by the tone each side
hears; a screenshot of every state lands in tests/artifacts/screenshots.
"""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path

import pytest

from tests.browser.webphone import UI_TIMEOUT_MS, WebPhone, launch_private_browser
from tests.fixtures.gateway import GatewayFactory, GatewayProcess
from tests.sip.core_peer import RawUdpPeer
from tests.support.browser import write_browser_tone
from tests.support.healthz import gateway_http_url
from tests.support.voicemail_pbx import PBX_ADDRESS, VoicemailPbx, trunk_config

DOMAIN = "example.test"
EXTENSION = "201"  # a desk phone on the PBX, busy all along
MAILBOX = "9700"  # what alice's web phone subscribes to for its voicemail
TONES = {"alice": 440.0, "bob": 700.0, "carol": 1000.0}
TOLERANCE_HZ = 12.0  # one AnalyserNode bin is 48000 / 8192 ≈ 5.9 Hz
async def lamp(phone: WebPhone, contact: str, state: str) -> None:
    await phone.page.wait_for_selector(f"#contact-list li[data-contact='{contact}']"
                                       f"[data-state='{state}']", timeout=UI_TIMEOUT_MS)


async def second_call(phone: WebPhone, state: str) -> str:
    await phone.page.wait_for_selector(f"#second-call[data-state='{state}']",
                                       state="attached", timeout=UI_TIMEOUT_MS)
    return await phone.page.inner_text("#second-call")


async def hears(phone: WebPhone, who: str) -> None:
    heard = await phone.heard_frequency()
    assert heard == pytest.approx(TONES[who], abs=TOLERANCE_HZ), \
        f"{phone.name} should hear {who}: {heard} Hz\n{phone.console()}"


def console_errors(phone: WebPhone) -> list[str]:
    return [line for line in phone.browser.console
            if line.startswith(("[error]", "[pageerror]"))]


async def test_lamps_voicemail_call_waiting_and_transfers(
    gateway_factory: GatewayFactory, tmp_path: Path,
) -> None:
    pbx_peer = await RawUdpPeer.open(PBX_ADDRESS)
    config = trunk_config(tmp_path / "trunk.toml", pbx_peer.address[1])
    gateway: GatewayProcess = await gateway_factory(
        # dave is a user who never signs in.
        users={name: secrets.token_urlsafe(9) for name in (*TONES, "dave")}, domain=DOMAIN,
        transports=("udp", "ws"), extra_args=["--config", config])
    assert gateway.udp_port is not None
    pbx = VoicemailPbx(pbx_peer, ("127.0.0.1", gateway.udp_port), DOMAIN)
    base_url = gateway_http_url(gateway)
    async with contextlib.AsyncExitStack() as stack:
        phones: dict[str, WebPhone] = {}
        for name, tone in TONES.items():
            browser = await stack.enter_async_context(launch_private_browser(
                write_browser_tone(tmp_path / f"{name}.wav", tone), name=name))
            phones[name] = await WebPhone.open(browser, base_url, name)
        stack.push_async_callback(pbx.close)
        alice, bob, carol = phones["alice"], phones["bob"], phones["carol"]
        # The page loads without a console error (no /favicon.ico 404 any more).
        assert console_errors(alice) == []
        for name, phone in phones.items():
            await phone.sign_in_and_wait(name, gateway.users[name])

        # --- contacts and voicemail --------------------------------------------------------
        await alice.page.click("#settings summary")
        await alice.page.fill("#contacts-input", f"bob carol dave {EXTENSION}")
        await alice.page.fill("#voicemail-uri", MAILBOX)
        await alice.page.click("#save-settings")
        await lamp(alice, "bob", "idle")  # the gateway's own dialog notifier + bob's presence
        await lamp(alice, "carol", "idle")
        await lamp(alice, EXTENSION, "busy")  # the PBX's hint, through the trunk
        await lamp(alice, "dave", "offline")  # presence: 480, nobody signed in as dave
        await alice.page.wait_for_selector("#voicemail[data-waiting='yes']",
                                           timeout=UI_TIMEOUT_MS)
        assert await alice.page.inner_text("#voicemail") == "✉ 2 new voicemails"
        events = sorted((s.get("event"), s.ruri.user) for s in pbx.subscribes)
        assert ("dialog", EXTENSION) in events and ("message-summary", MAILBOX) in events
        await alice.screenshot("softphone-01-contacts-and-voicemail")
        # Unsolicited MWI from the PBX to bob, no subscription (Asterisk's default).
        mwi_call_id = pbx.unsolicited_mwi("bob", 1, 0)
        await bob.page.wait_for_selector("#voicemail[data-waiting='yes']",
                                         timeout=UI_TIMEOUT_MS)
        assert await bob.page.inner_text("#voicemail") == "✉ 1 new voicemail"
        await bob.screenshot("softphone-01b-unsolicited-voicemail")
        assert await pbx.notify_answer(mwi_call_id) == 200

        # --- busy lamps follow a call between two browser users ------------------------------
        await bob.call("carol")
        assert await carol.wait_call_state("incoming") == "Incoming call from bob"
        await lamp(alice, "bob", "ringing")
        await lamp(alice, "carol", "ringing")
        await alice.screenshot("softphone-02-lamps-ringing")
        await carol.answer()
        await carol.wait_call_state("active")
        await lamp(alice, "bob", "busy")
        await lamp(alice, "carol", "busy")
        await alice.screenshot("softphone-03-lamps-busy")

        # --- call waiting: reject, then hold-and-answer, swap --------------------------------
        await alice.call("carol")
        assert await second_call(carol, "waiting") == "Call waiting: alice"
        await carol.screenshot("softphone-04-call-waiting")
        await carol.page.click("#reject-waiting")
        assert await alice.wait_error() == "carol is busy."
        await second_call(carol, "none")
        await alice.call("carol")
        await second_call(carol, "waiting")
        await carol.page.click("#accept-waiting")
        assert await carol.wait_call_state("active") == "In call with alice"
        assert await second_call(carol, "held") == "bob: on hold"
        await bob.wait_call_state("held")
        await hears(carol, "alice")
        await hears(alice, "carol")
        await carol.screenshot("softphone-05-two-calls")
        await carol.page.click("#swap")
        assert await carol.wait_call_state("active") == "In call with bob"
        assert await second_call(carol, "held") == "alice: on hold"
        await hears(carol, "bob")
        await hears(bob, "carol")
        await carol.screenshot("softphone-06-swapped")
        await carol.hang_up()  # bob's call ends; alice's, on hold, comes to the front
        assert await bob.wait_call_state("idle") == "carol hung up"
        assert await carol.wait_call_state("held") == "alice: on hold"
        await carol.page.click("#hold")
        await carol.wait_call_state("active")
        await hears(carol, "alice")

        # --- blind transfer: carol sends alice to bob ---------------------------------------
        await carol.page.fill("#transfer-target", "bob")
        await carol.page.click("#transfer")
        assert await bob.wait_call_state("incoming") == "Incoming call from alice"
        await bob.answer()
        await bob.wait_call_state("active")
        await carol.page.wait_for_selector("#transfer-status[data-state='done']",
                                           timeout=UI_TIMEOUT_MS)
        assert await carol.page.inner_text("#transfer-status") == \
            "alice transferred to bob"
        await carol.wait_call_state("idle")
        await alice.wait_call_state("active")
        await hears(alice, "bob")
        await hears(bob, "alice")
        await carol.screenshot("softphone-07-blind-transfer-done")

        # --- attended transfer: alice consults carol, then hands bob over to her ------------
        await alice.call("carol")
        assert await second_call(alice, "held") == "bob: on hold"
        await carol.wait_call_state("incoming")
        await carol.answer()
        await alice.wait_call_state("active")
        await hears(carol, "alice")
        await alice.screenshot("softphone-08-consultation")
        await alice.page.click("#complete-transfer")
        await alice.page.wait_for_selector("#transfer-status[data-state='done']",
                                           timeout=UI_TIMEOUT_MS)
        assert await alice.page.inner_text("#transfer-status") == "bob transferred to carol"
        await alice.wait_call_state("idle")
        await bob.wait_call_state("active")
        await carol.wait_call_state("active")
        await hears(bob, "carol")
        await hears(carol, "bob")
        await alice.screenshot("softphone-09-attended-transfer-done")
        await bob.hang_up()
        await carol.wait_call_state("idle")
        await lamp(alice, "bob", "idle")
        await lamp(alice, "carol", "idle")
        for phone in phones.values():
            assert console_errors(phone) == [], phone.console()
