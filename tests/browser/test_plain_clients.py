"""Scenario 4: no project UI — a bare JsSIP page and a bare SIP.js page (the npm packages as
built by tests/js) register with the gateway and call a pjsua2 phone; both directions of audio
are checked by frequency. Chromium keeps its mDNS host candidates."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Page

from tests.browser.webphone import launch_private_browser
from tests.fixtures.gateway import GatewayFactory, GatewayProcess
from tests.support.audio import assert_hears, read_wav_pcm
from tests.support.browser import (
    StaticServer,
    dominant_frequency,
    peer_connection_stats,
    write_browser_tone,
)
from tests.support.pjsua_phone import PjsuaPhone

BROWSER_TONE = 440.0
PHONE_TONE = 1000.0
TOLERANCE_HZ = 12.0
LISTEN_MS = 2500
SETTLE_SECONDS = 0.5

JSSIP_CALL = """async ([wsUrl, user, password, domain, target]) => {
  const ua = new JsSIP.UA({
    sockets: [new JsSIP.WebSocketInterface(wsUrl)], uri: `sip:${user}@${domain}`, password,
  });
  await new Promise((registered, failed) => {
    ua.on('registered', registered);
    ua.on('registrationFailed', (e) => failed(new Error(`REGISTER failed: ${e.cause}`)));
    ua.start();
  });
  window.remoteStream = new MediaStream();
  window.ended = new Promise((resolve) => { window.endCall = resolve; });
  const session = ua.call(target, { mediaConstraints: { audio: true, video: false } });
  window.pc = session.connection;
  window.pc.addEventListener('track', (e) => window.remoteStream.addTrack(e.track));
  session.on('ended', (e) => window.endCall(`ended by ${e.originator}`));
  await new Promise((confirmed, failed) => {
    session.on('confirmed', confirmed);
    session.on('failed', (e) => failed(new Error(`call failed: ${e.cause}`)));
  });
}"""

SIPJS_CALL = """async ([wsUrl, user, password, domain, target]) => {
  const { UserAgent, Registerer, RegistererState, Inviter, SessionState } = SIP;
  const ua = new UserAgent({
    uri: UserAgent.makeURI(`sip:${user}@${domain}`),
    transportOptions: { server: wsUrl },
    authorizationUsername: user,
    authorizationPassword: password,
  });
  await ua.start();
  const registerer = new Registerer(ua);
  await new Promise((registered, failed) => {
    registerer.stateChange.addListener((state) => {
      if (state === RegistererState.Registered) registered();
    });
    registerer.register({ requestDelegate: {
      onReject: (reply) => failed(new Error(`REGISTER failed: ${reply.message.statusCode}`)),
    } });
  });
  const inviter = new Inviter(ua, UserAgent.makeURI(target), {
    sessionDescriptionHandlerOptions: { constraints: { audio: true, video: false } },
  });
  window.ended = new Promise((resolve) => { window.endCall = resolve; });
  const established = new Promise((confirmed, failed) => {
    inviter.stateChange.addListener((state) => {
      if (state === SessionState.Established) confirmed();
      if (state === SessionState.Terminated) {
        window.endCall('terminated');
        failed(new Error('call terminated before it was established'));
      }
    });
  });
  await inviter.invite();
  await established;
  window.remoteStream = inviter.sessionDescriptionHandler.remoteMediaStream;
  window.pc = inviter.sessionDescriptionHandler.peerConnection;
}"""


@pytest.fixture
async def site() -> AsyncIterator[StaticServer]:
    async with StaticServer() as server:
        yield server


@pytest.fixture
async def gateway_for_site(gateway_factory: GatewayFactory, site: StaticServer
                           ) -> GatewayProcess:
    # The bare pages come from the test server, another origin than the gateway's own page.
    return await gateway_factory(
        users={"alice": uuid.uuid4().hex, "bob": uuid.uuid4().hex},
        extra_args=["--allowed-origin", site.base_url],
    )


@pytest.mark.parametrize("stack", ["jssip", "sipjs"])
async def test_bare_browser_stack_calls_a_sip_phone(
    stack: str, gateway_for_site: GatewayProcess, site: StaticServer, tmp_path: Path,
) -> None:
    gateway = gateway_for_site
    phone = await PjsuaPhone.start(f"plain-{stack}-bob-{uuid.uuid4().hex[:6]}")
    tone = write_browser_tone(tmp_path / "browser.wav", BROWSER_TONE)
    try:
        registered = await phone.register("127.0.0.1", gateway.port("udp"), "bob",
                                          gateway.users["bob"], gateway.domain)
        assert registered["code"] == 200, registered
        await phone.play_tone(PHONE_TONE)
        await phone.set_auto_answer(200)
        async with launch_private_browser(tone, name=f"plain-{stack}") as browser:
            page: Page = await browser.context.new_page()
            page.on("console", browser._keep_console)
            await page.goto(site.url("webrtc.html"))
            await page.wait_for_function("window.ws2sipMedia !== undefined")
            call = JSSIP_CALL if stack == "jssip" else SIPJS_CALL
            await page.evaluate(call, [gateway.ws_url, "alice", gateway.users["alice"],
                                       gateway.domain, f"sip:bob@{gateway.domain}"])
            await phone.wait_for("call_state", 15, state="CONFIRMED")

            recording = tmp_path / "phone-heard.wav"
            await phone.record(recording)
            heard = await dominant_frequency(page, "window.remoteStream", LISTEN_MS)
            await phone.stop_recording()
            stats = await peer_connection_stats(page, "window.pc")
            assert heard == pytest.approx(PHONE_TONE, abs=TOLERANCE_HZ), (stats, browser.console)
            samples, rate = read_wav_pcm(recording)
            assert_hears(samples[int(rate * SETTLE_SECONDS):], rate, BROWSER_TONE)
            assert stats["dtlsState"] == "connected", stats

            await phone.hangup()
            ended = await page.evaluate("window.ended")
            assert ended in ("ended by remote", "terminated"), ended
    finally:
        await phone.stop()


