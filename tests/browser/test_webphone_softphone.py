"""Issue 17 items 4 and 5 in the web phone: what a softphone user expects, in three Chromium
web phones (alice 440 Hz, bob 700 Hz, carol 1000 Hz) and a PBX behind a trunk.

The PBX is written by hand (tests.sip.core_peer.RawUdpPeer on 127.0.0.2, the trunk's trusted
address) the way Asterisk speaks: unsolicited MWI NOTIFYs (res_pjsip_mwi with `mailboxes=` on
an AOR and no subscription), and a notifier for subscriptions to a mailbox (message-summary)
and to an extension's hint (dialog). One story, each step judged on the screen and, for calls,
by the tone each side hears; a screenshot of every state lands in tests/artifacts/screenshots.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from pathlib import Path

import pytest

from sip.message import Request
from tests.browser.webphone import UI_TIMEOUT_MS, WebPhone, launch_private_browser
from tests.fixtures.gateway import GatewayFactory, GatewayProcess
from tests.sip.core_peer import RawUdpPeer
from tests.support.browser import write_browser_tone
from tests.support.healthz import gateway_http_url

DOMAIN = "example.test"
PBX_ADDRESS = "127.0.0.2"
EXTENSION = "201"  # a desk phone on the PBX, busy all along
MAILBOX = "9700"  # what alice's web phone subscribes to for its voicemail
TONES = {"alice": 440.0, "bob": 700.0, "carol": 1000.0}
TOLERANCE_HZ = 12.0  # one AnalyserNode bin is 48000 / 8192 ≈ 5.9 Hz
BUSY_EXTENSION = (
    '<?xml version="1.0"?>\n<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" '
    'version="0" state="full" entity="sip:201@pbx">\n'
    '<dialog id="a1" direction="recipient"><state>confirmed</state></dialog>\n</dialog-info>\n'
)


class VoicemailPbx:
    """The PBX's side of MWI and BLF, as Asterisk sends it."""

    def __init__(self, peer: RawUdpPeer, gateway: tuple[str, int]) -> None:
        self.peer = peer
        self.gateway = gateway
        self.subscribes: list[Request] = []
        self.notify_answers: list[int] = []
        self._task = asyncio.create_task(self._serve())

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.peer.close()

    def unsolicited_mwi(self, user: str, new: int, old: int) -> None:
        """Asterisk's unsolicited MWI: a NOTIFY outside any dialog to the user's contact."""
        host, port = self.peer.address
        body = f"Messages-Waiting: yes\r\nMessage-Account: sip:{user}@{DOMAIN}\r\n" \
               f"Voice-Message: {new}/{old} (0/0)\r\n"
        self.peer.send(
            f"NOTIFY sip:{user}@{self.gateway[0]}:{self.gateway[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:asterisk@{host}>;tag={secrets.token_hex(4)}\r\n"
            f"To: <sip:{user}@{DOMAIN}>\r\n"
            f"Call-ID: {secrets.token_hex(8)}\r\n"
            "CSeq: 1 NOTIFY\r\n"
            f"Contact: <sip:asterisk@{host}:{port}>\r\n"
            "Event: message-summary\r\n"
            "Subscription-State: terminated\r\n"
            "Content-Type: application/simple-message-summary\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}", self.gateway)

    async def _serve(self) -> None:
        while True:
            message = await self.peer.next_message(timeout=3600)
            if not isinstance(message, Request):
                self.notify_answers.append(message.status)
                continue
            if message.method != "SUBSCRIBE":
                self.peer.send(message.response(200).to_bytes(), self.gateway)
                continue
            self.subscribes.append(message)
            event = (message.get("event") or "").split(";")[0]
            body = {
                "message-summary": ("application/simple-message-summary",
                                    "Messages-Waiting: yes\r\nVoice-Message: 2/5 (0/0)\r\n"),
                "dialog": ("application/dialog-info+xml", BUSY_EXTENSION),
            }.get(event)
            if body is None:
                self.peer.send(message.response(489, "Bad Event").to_bytes(), self.gateway)
                continue
            self._accept(message, *body)

    def _accept(self, subscribe: Request, content_type: str, body: str) -> None:
        tag = f"pbx{secrets.token_hex(3)}"
        host, port = self.peer.address
        ok = subscribe.response(200, to_tag=tag)
        for route in subscribe.get_all("record-route"):
            ok.add("Record-Route", route)
        ok.add("Contact", f"<sip:{subscribe.ruri.user}@{host}:{port}>")
        ok.add("Expires", subscribe.get("expires") or "600")
        ok.add("Content-Length", "0")
        self.peer.send(ok.to_bytes(), self.gateway)
        routes = "".join(f"Route: {r}\r\n" for r in subscribe.get_all("record-route"))
        self.peer.send(
            f"NOTIFY {subscribe.contacts[0].uri_text} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
            f"{routes}Max-Forwards: 70\r\n"
            f"From: {subscribe.get('to')};tag={tag}\r\n"
            f"To: {subscribe.get('from')}\r\n"
            f"Call-ID: {subscribe.call_id}\r\n"
            "CSeq: 1 NOTIFY\r\n"
            f"Contact: <sip:{subscribe.ruri.user}@{host}:{port}>\r\n"
            f"Event: {subscribe.get('event')}\r\n"
            f"Subscription-State: active;expires={subscribe.get('expires') or '600'}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}", self.gateway)


def trunk_config(path: Path, pbx_port: int) -> str:
    path.write_text(
        "[[trunks]]\n"
        'name = "pbx"\n'
        f'address = "{PBX_ADDRESS}:{pbx_port}"\n'
        'match = "2[0-9]{2}|97[0-9]{2}"\n'
        f'trusted_sources = ["{PBX_ADDRESS}"]\n'
    )
    return str(path)


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
        users={name: secrets.token_urlsafe(9) for name in TONES}, domain=DOMAIN,
        transports=("udp", "ws"), extra_args=["--config", config])
    assert gateway.udp_port is not None
    pbx = VoicemailPbx(pbx_peer, ("127.0.0.1", gateway.udp_port))
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
        await alice.page.fill("#contacts-input", f"bob carol {EXTENSION}")
        await alice.page.fill("#voicemail-uri", MAILBOX)
        await alice.page.click("#save-settings")
        await lamp(alice, "bob", "idle")  # the gateway's own dialog notifier + bob's presence
        await lamp(alice, "carol", "idle")
        await lamp(alice, EXTENSION, "busy")  # the PBX's hint, through the trunk
        await alice.page.wait_for_selector("#voicemail[data-waiting='yes']",
                                           timeout=UI_TIMEOUT_MS)
        assert await alice.page.inner_text("#voicemail") == "✉ 2 new voicemails"
        events = sorted((s.get("event"), s.ruri.user) for s in pbx.subscribes)
        assert ("dialog", EXTENSION) in events and ("message-summary", MAILBOX) in events
        await alice.screenshot("softphone-01-contacts-and-voicemail")
        # Unsolicited MWI from the PBX to bob, no subscription (Asterisk's default).
        pbx.unsolicited_mwi("bob", 1, 0)
        await bob.page.wait_for_selector("#voicemail[data-waiting='yes']",
                                         timeout=UI_TIMEOUT_MS)
        assert await bob.page.inner_text("#voicemail") == "✉ 1 new voicemail"
        assert 200 in pbx.notify_answers

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
