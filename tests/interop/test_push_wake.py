"""RFC 8599 push: a sleeping mobile app is woken by an APNs push and takes its call (issue 16).

The gateway's real HTTP/2 client talks to a local APNs stand-in (tests/support/push_services)
that checks what APNs checks: the ES256 provider token against the key's public half, the VoIP
headers and topic, the payload. The "app" is pjsua2 over TCP or TLS, registering with push
parameters and its own +sip.instance. It is suspended (its process killed: the connection
closes, no un-REGISTER); when the stand-in receives the push, a new pjsua2 process (the app
relaunched by PushKit) registers with the same instance and push token and answers.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.browser.webphone import WebPhone, launch_private_browser
from tests.fixtures.gateway import GatewayFactory, GatewayProcess
from tests.support.audio import assert_hears, read_wav_pcm
from tests.support.browser import BrowserSession, write_browser_tone
from tests.support.healthz import gateway_http_url, gateway_metrics_url, metric_value
from tests.support.pjsua_phone import PjsuaPhone
from tests.support.ports import free_port
from tests.support.push_services.apns import ApnsPush, ApnsStandIn
from tests.support.push_services.server import Http2Server, serve_http2, write_self_signed
from tests.support.ws_sip import WsSipUa

DOMAIN = "example.test"
TEAM_ID = "TEAM4SIP01"
KEY_ID = "KEY4SIP001"
BUNDLE_ID = "org.example.ws2sip"
PN_PARAM = f"{TEAM_ID}.{BUNDLE_ID}.voip"
BROWSER_TONE = 440.0
PHONE_TONE = 1000.0
TOLERANCE_HZ = 12.0
LISTEN_SECONDS = 2.5
SETTLE_SECONDS = 0.5
WAKE_TIMEOUT = 20.0  # a generous limit: the machine is shared


@dataclass
class Apns:
    app: ApnsStandIn
    server: Http2Server
    key_file: Path

    def gateway_args(self, *, wait: float, repeat: float) -> list[str]:
        return ["--push-apns-url", self.server.url, "--push-apns-key-file", str(self.key_file),
                "--push-apns-key-id", KEY_ID, "--push-apns-team-id", TEAM_ID,
                "--push-ca-file", str(self.server.ca_file), "--push-wait", str(wait),
                "--push-repeat", str(repeat)]


@pytest.fixture
async def apns(tmp_path: Path) -> AsyncIterator[Apns]:
    """APNs on loopback. Tests ask for it before gateway_factory: their gateways stop first."""
    key = ec.generate_private_key(ec.SECP256R1())
    key_file = tmp_path / f"AuthKey_{KEY_ID}.p8"  # Apple's file: PKCS#8 PEM
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    app = ApnsStandIn(key.public_key(), KEY_ID, TEAM_ID, BUNDLE_ID)
    async with serve_http2(app, tmp_path / "apns", "apns-standin") as server:
        yield Apns(app, server, key_file)


@dataclass
class MobileApp:
    """One app install: its push token and instance id survive its processes."""

    user: str
    password: str
    transport: str
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    instance: str = field(default_factory=lambda: f"urn:uuid:{uuid.uuid4()}")
    processes: list[PjsuaPhone] = field(default_factory=list)

    @property
    def contact_params(self) -> str:
        return f";pn-provider=apns;pn-prid={self.token};pn-param={PN_PARAM}"

    async def launch(self, gateway: GatewayProcess) -> PjsuaPhone:
        """Start the app and register it with `gateway` over its transport (TCP or TLS)."""
        phone = await PjsuaPhone.start(f"{self.user}-app{len(self.processes)}",
                                       transport=self.transport)
        self.processes.append(phone)
        await phone.play_tone(PHONE_TONE)
        registered = await phone.register(
            "127.0.0.1", sip_port(gateway, self.transport), self.user, self.password, DOMAIN,
            contact_params=self.contact_params, instance_id=self.instance,
        )
        assert registered["code"] == 200, registered
        return phone

    async def stop(self) -> None:
        for phone in self.processes:
            await phone.stop()


async def start_gateway(factory: GatewayFactory, apns: Apns, users: dict[str, str], *,
                        wait: float = 20.0, repeat: float = 5.0, tls_dir: Path | None = None,
                        redis_url: str | None = None, node_id: str | None = None,
                        extra_args: tuple[str, ...] = ()) -> GatewayProcess:
    args = [*apns.gateway_args(wait=wait, repeat=repeat), *extra_args]
    if tls_dir is not None:
        cert, key = write_self_signed(tls_dir, f"gateway-{node_id or 'single'}")
        args += ["--tls", f"127.0.0.1:{free_port()}", "--tls-cert", str(cert),
                 "--tls-key", str(key)]
    return await factory(users=users, domain=DOMAIN, transports=("udp", "tcp", "ws"),
                         redis_url=redis_url, node_id=node_id, extra_args=args)


def sip_port(gateway: GatewayProcess, transport: str) -> int:
    """The port of the gateway's `transport` listener (TLS: from its --tls argument)."""
    if transport != "tls":
        return gateway.port(transport)
    return int(gateway.extra_args[gateway.extra_args.index("--tls") + 1].rpartition(":")[2])


class Relaunch:
    """When the first call push for the app's token arrives, start the app again (PushKit
    relaunching it), registered with `gateway`."""

    def __init__(self, apns: Apns, app: MobileApp, gateway: GatewayProcess) -> None:
        self._launched = asyncio.Event()
        self._task: asyncio.Task[PjsuaPhone] | None = None

        def on_push(push: ApnsPush) -> None:
            if push.device_token == app.token and push.payload["ws2sip"]["type"] == "call" \
                    and self._task is None:
                self._task = asyncio.create_task(app.launch(gateway))
                self._launched.set()

        apns.app.on_push = on_push

    async def phone(self, timeout: float) -> PjsuaPhone:
        await asyncio.wait_for(self._launched.wait(), timeout)
        assert self._task is not None
        return await asyncio.wait_for(self._task, timeout)


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def assert_both_hear(web: WebPhone, phone: PjsuaPhone, recording: Path) -> None:
    await phone.record(recording)
    heard = await web.heard_frequency(int(LISTEN_SECONDS * 1000))
    await phone.stop_recording()
    assert heard == pytest.approx(PHONE_TONE, abs=TOLERANCE_HZ), (await web.stats(),
                                                                  web.console())
    samples, rate = read_wav_pcm(recording)
    assert_hears(samples[int(rate * SETTLE_SECONDS):], rate, BROWSER_TONE)


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserSession]:
    tone = write_browser_tone(tmp_path / "browser.wav", BROWSER_TONE)
    async with launch_private_browser(tone, name="push-caller") as session:
        yield session


async def call_sleeping_app(web: WebPhone, apns: Apns, app: MobileApp,
                            woken: Relaunch) -> PjsuaPhone:
    """The browser calls the suspended app; the push wakes it; it answers. Both must hear."""
    await web.call(app.user)
    (push,) = await apns.app.wait_for_pushes(1, WAKE_TIMEOUT)
    assert (push.topic, push.push_type, push.priority) == (f"{BUNDLE_ID}.voip", "voip", "10")
    assert push.payload["ws2sip"]["to"] == f"sip:{app.user}@{DOMAIN}"
    assert await web.wait_call_state("ringing") == f"Ringing {app.user}…"  # the gateway's 180
    phone = await woken.phone(WAKE_TIMEOUT)
    incoming = await phone.wait_for("incoming_call", WAKE_TIMEOUT)
    assert "alice" in incoming["from"]
    assert incoming["call_id"] == push.payload["ws2sip"]["call-id"]
    await phone.answer(200)
    assert await web.wait_call_state("active") == f"In call with {app.user}"
    await phone.wait_for("call_state", 15, state="CONFIRMED")
    return phone


async def test_a_suspended_app_over_tcp_is_woken_and_answers_a_browser(
    apns: Apns, gateway_factory: GatewayFactory, browser: BrowserSession, tmp_path: Path,
) -> None:
    users = {"alice": secrets.token_urlsafe(9), "bob": secrets.token_urlsafe(9)}
    gateway = await start_gateway(gateway_factory, apns, users)
    app = MobileApp("bob", users["bob"], "tcp")
    try:
        await (await app.launch(gateway)).suspend()
        # Its TCP flow closed, its binding stays: the gateway counts it.
        assert await metric_value(gateway_metrics_url(gateway), "ws2sip_bindings") == 1
        woken = Relaunch(apns, app, gateway)
        web = await WebPhone.open(browser, gateway_http_url(gateway), "alice")
        await web.sign_in_and_wait("alice", users["alice"])

        phone = await call_sleeping_app(web, apns, app, woken)
        await assert_both_hear(web, phone, tmp_path / "app-heard.wav")
        await web.hang_up()
        await phone.wait_for("call_state", 15, state="DISCONNECTED")
    finally:
        await app.stop()
    metrics = gateway_metrics_url(gateway)
    assert await metric_value(metrics, 'ws2sip_pushes_sent_total{provider="apns"}') >= 1
    assert await metric_value(metrics, "ws2sip_push_wake_seconds_count") == 1
    assert await metric_value(metrics, "ws2sip_push_calls_lost_total") == 0


async def test_an_app_over_tls_sleeping_on_one_node_wakes_up_on_the_other(
    apns: Apns, gateway_factory: GatewayFactory, browser: BrowserSession, tmp_path: Path,
    redis_url: str,
) -> None:
    users = {"alice": secrets.token_urlsafe(9), "bob": secrets.token_urlsafe(9)}
    secret = ("--auth-secret", secrets.token_hex(16))
    node_a = await start_gateway(gateway_factory, apns, users, tls_dir=tmp_path / "a",
                                 redis_url=redis_url, node_id="node-a", extra_args=secret)
    node_b = await start_gateway(gateway_factory, apns, {}, tls_dir=tmp_path / "b",
                                 redis_url=redis_url, node_id="node-b", extra_args=secret)
    app = MobileApp("bob", users["bob"], "tls")
    try:
        await (await app.launch(node_a)).suspend()
        # The push wakes it, and its network (a load balancer) sends it to node B this time.
        woken = Relaunch(apns, app, node_b)
        web = await WebPhone.open(browser, gateway_http_url(node_a), "alice")
        await web.sign_in_and_wait("alice", users["alice"])

        phone = await call_sleeping_app(web, apns, app, woken)
        await assert_both_hear(web, phone, tmp_path / "app-heard.wav")
        await phone.hangup()
        assert await web.wait_call_state("idle") == f"{app.user} hung up"
    finally:
        await app.stop()
    # Node A waited and pushed; node B announced the REGISTER through Redis.
    assert await metric_value(gateway_metrics_url(node_a), "ws2sip_push_wake_seconds_count") == 1


# --- the cheaper cases: a pjsua2 caller, the app a WebSocket that registered and went away ----
async def sleeping_ws_app(gateway: GatewayProcess, user: str, token: str) -> None:
    """A push binding over WebSocket whose connection then closed."""
    app = await WsSipUa.connect(gateway.ws_url, user, gateway.users[user], domain=DOMAIN)
    try:
        contact = (f"<sip:{user}@{app.host};transport=ws;pn-provider=apns;pn-prid={token};"
                   f"pn-param={PN_PARAM}>;+sip.instance=\"<urn:uuid:{uuid.uuid4()}>\";reg-id=1")
        ok = await app.register(contacts=[contact])
        assert ok.status == 200
        assert ok.get_all("feature-caps") == ['*;+sip.pns="apns"']
        # Push parameters the gateway cannot serve, or incomplete ones, are refused.
        other = contact.replace("pn-provider=apns", "pn-provider=acme")
        assert (await app.register(contacts=[other])).status == 555
        incomplete = contact.replace(f"pn-prid={token};", "")
        assert (await app.register(contacts=[incomplete])).status == 400
    finally:
        await app.close()


@pytest.fixture
async def caller() -> AsyncIterator[PjsuaPhone]:
    phone = await PjsuaPhone.start(f"alice-{uuid.uuid4().hex[:6]}")
    yield phone
    await phone.stop()


async def test_cancel_before_the_app_wakes_sends_the_cancel_push_and_leaves_nothing(
    apns: Apns, gateway_factory: GatewayFactory, caller: PjsuaPhone,
) -> None:
    users = {"alice": secrets.token_urlsafe(9), "bob": secrets.token_urlsafe(9)}
    gateway = await start_gateway(gateway_factory, apns, users, wait=20, repeat=10)
    token = secrets.token_hex(32)
    await sleeping_ws_app(gateway, "bob", token)
    assert (await caller.register("127.0.0.1", gateway.udp_port, "alice", users["alice"],
                                  DOMAIN))["code"] == 200
    await caller.call(f"sip:bob@{DOMAIN}")
    await caller.wait_for("call_state", 15, state="EARLY", code=180)
    (call_push,) = await apns.app.wait_for_pushes(1)
    await caller.hangup()  # a CANCEL: the call is not answered
    await caller.wait_for("call_state", 15, state="DISCONNECTED")
    # pjsua reports its own hang-up code; what the gateway answered is in its SIP log.
    await until(lambda: "Response msg 487/INVITE" in caller.pjsip_log_path.read_text())
    pushes = await apns.app.wait_for_pushes(2)
    cancel = pushes[1].payload["ws2sip"]
    assert cancel == {**call_push.payload["ws2sip"], "type": "cancel"}
    metrics = gateway_metrics_url(gateway)
    assert await metric_value(metrics, "ws2sip_dialogs") == 0
    assert await metric_value(metrics, "ws2sip_media_sessions") == 0
    assert await metric_value(metrics, "ws2sip_push_calls_lost_total") == 0
    await asyncio.sleep(1.5)  # no further push once cancelled
    assert len(apns.app.pushes) == 2


async def test_an_app_that_never_wakes_costs_a_480_and_is_counted_and_a_dead_token_is_dropped(
    apns: Apns, gateway_factory: GatewayFactory, caller: PjsuaPhone,
) -> None:
    users = {"alice": secrets.token_urlsafe(9), "bob": secrets.token_urlsafe(9),
             "carol": secrets.token_urlsafe(9)}
    gateway = await start_gateway(gateway_factory, apns, users, wait=2, repeat=1)
    metrics = gateway_metrics_url(gateway)
    await sleeping_ws_app(gateway, "bob", secrets.token_hex(32))
    assert (await caller.register("127.0.0.1", gateway.udp_port, "alice", users["alice"],
                                  DOMAIN))["code"] == 200

    await caller.call(f"sip:bob@{DOMAIN}")
    ended = await caller.wait_for("call_state", 15, state="DISCONNECTED")
    assert ended["code"] == 480
    # Repeated while waiting, then the app is told the call is over.
    await until(lambda: apns.app.pushes[-1].payload["ws2sip"]["type"] == "cancel")
    kinds = [push.payload["ws2sip"]["type"] for push in apns.app.pushes]
    assert kinds.count("call") >= 2 and kinds.count("cancel") == 1, kinds
    assert await metric_value(metrics, "ws2sip_push_calls_lost_total") == 1

    # APNs says carol's token is dead (410 Unregistered): her push binding goes.
    dead = secrets.token_hex(32)
    apns.app.unregistered.add(dead)
    await sleeping_ws_app(gateway, "carol", dead)
    assert await metric_value(metrics, "ws2sip_bindings") == 3  # alice's, bob's, carol's
    await caller.call(f"sip:carol@{DOMAIN}")
    ended = await caller.wait_for("call_state", 15, state="DISCONNECTED")
    assert ended["code"] == 480
    assert (410, "Unregistered") in apns.app.refusals
    assert await metric_value(metrics, 'ws2sip_push_invalid_tokens_total{provider="apns"}') == 1
    assert await metric_value(metrics, "ws2sip_bindings") == 2  # bob's push binding stays
    refused = len(apns.app.refusals)
    await caller.call(f"sip:carol@{DOMAIN}")  # nothing left to push to
    ended = await caller.wait_for("call_state", 15, state="DISCONNECTED")
    assert ended["code"] == 480
    assert len(apns.app.refusals) == refused
    assert gateway.log_text().count("called the push token") == 1
