"""Hostile input against the real gateway over UDP (issue 14, Low items): every bad request
gets a final error response with a reason, leaves nothing behind, and logs no traceback."""

from __future__ import annotations

import asyncio
import re
import secrets
from typing import Any

import aiohttp
import pytest

from sip.digest import build_authorization, select_challenge
from sip.message import Request, Response, parse_message
from tests.fixtures.gateway import GatewayFactory, GatewayProcess
from tests.sip.core_peer import RawUdpPeer
from tests.sip.torture.generate import load as load_torture
from tests.support.healthz import bindings_count, gateway_metrics_url, metric_value
from webrtc import sdp
from webrtc.negotiation import relayable

DOMAIN = "example.test"
REPLY_TIMEOUT = 5.0


def users() -> dict[str, str]:
    return {name: secrets.token_urlsafe(9) for name in ("alice", "bob")}


class UdpClient:
    """A UDP user agent writing its requests as bytes, so that they can hold any byte."""

    def __init__(self, peer: RawUdpPeer, gateway: GatewayProcess) -> None:
        assert gateway.udp_port is not None
        self.peer = peer
        self.gateway = ("127.0.0.1", gateway.udp_port)

    @classmethod
    async def open(cls, gateway: GatewayProcess) -> UdpClient:
        return cls(await RawUdpPeer.open(), gateway)

    def close(self) -> None:
        self.peer.close()

    def request(self, method: str, *, ruri: bytes = b"sip:bob@" + DOMAIN.encode(),
                user: bytes = b"alice", call_id: bytes | None = None, cseq: int = 1,
                from_tag: bytes = b"f1", extra: bytes = b"", body: bytes = b"") -> bytes:
        host, port = self.peer.address
        branch = f"z9hG4bK{secrets.token_hex(6)}".encode()
        call_id = call_id or secrets.token_hex(8).encode()
        return (
            method.encode() + b" " + ruri + b" SIP/2.0\r\n"
            + f"Via: SIP/2.0/UDP {host}:{port};branch=".encode() + branch + b";rport\r\n"
            b"Max-Forwards: 70\r\n"
            b"From: <sip:" + user + b"@" + DOMAIN.encode() + b">;tag=" + from_tag + b"\r\n"
            b"To: <sip:" + (user if method == "REGISTER" else b"bob") + b"@"
            + DOMAIN.encode() + b">\r\n"
            b"Call-ID: " + call_id + b"\r\n"
            + f"CSeq: {cseq} {method}\r\n".encode()
            + f"Contact: <sip:alice@{host}:{port}>\r\n".encode()
            + extra
            + (b"Content-Type: application/sdp\r\n" if body else b"")
            + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        )

    async def exchange(self, data: bytes, method: str = "") -> Response:
        """Send, return the first final response (provisionals skipped)."""
        self.peer.send(data, self.gateway)
        while True:
            message = await self.peer.next_message(timeout=REPLY_TIMEOUT)
            if isinstance(message, Response) and message.status >= 200:
                return message

    async def authenticated(self, method: str, password: str, *, user: bytes = b"alice",
                            **fields: object) -> Response:
        """Draw a 401/407 with a plain request, then send this one with user's credentials
        answering it; the final answer to that."""
        request = await self.authenticated_request(method, password, user=user, **fields)
        return await self.exchange(request)

    async def authenticated_request(self, method: str, password: str, *,
                                    user: bytes = b"alice", **fields: object) -> bytes:
        """The request with user's credentials answering the challenge a plain one drew."""
        call_id = secrets.token_hex(8).encode()
        extra = fields.pop("extra", b"")
        body = fields.pop("body", b"")
        assert isinstance(extra, bytes) and isinstance(body, bytes)
        challenge = await self.exchange(self.request(method, call_id=call_id, user=user,
                                                     **fields))  # type: ignore[arg-type]
        assert challenge.status in (401, 407), challenge.start_line()
        header = "WWW-Authenticate" if challenge.status == 401 else "Proxy-Authenticate"
        ruri = fields.get("ruri", b"sip:bob@" + DOMAIN.encode())
        assert isinstance(ruri, bytes)
        credentials = build_authorization(
            select_challenge(challenge.get_all(header.lower())), method=method,
            uri=ruri.decode("utf-8", "surrogateescape"), username=user.decode(), password=password)
        answer_header = "Authorization" if challenge.status == 401 else "Proxy-Authorization"
        return self.request(
            method, call_id=call_id, cseq=2, body=body, user=user,
            extra=extra + f"{answer_header}: {credentials}\r\n".encode(), **fields)  # type: ignore[arg-type]


def tracebacks(gateway: GatewayProcess) -> list[str]:
    return re.findall(r"Traceback \(most recent call last\)", gateway.log_text())


async def metric(gateway: GatewayProcess, name: str) -> float:
    return await metric_value(gateway_metrics_url(gateway), name)


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory) -> GatewayProcess:
    return await gateway_factory(users=users(), domain=DOMAIN, transports=("udp", "ws"))


# --- bytes that are not UTF-8 -------------------------------------------------------------------
NON_UTF8 = b"\xa4"


@pytest.mark.parametrize(("method", "where"), [
    ("INVITE", "call-id"), ("INVITE", "from-tag"), ("INVITE", "ruri"),
    ("REGISTER", "call-id"), ("REGISTER", "from-tag"), ("MESSAGE", "ruri"),
    ("REGISTER", "digest-uri"),
])
async def test_non_utf8_bytes_in_identifiers_are_400(
    gateway: GatewayProcess, method: str, where: str,
) -> None:
    client = await UdpClient.open(gateway)
    try:
        fields: dict[str, Any] = {}
        if where == "call-id":
            fields["call_id"] = b"bad" + NON_UTF8 + b"call"
        elif where == "from-tag":
            fields["from_tag"] = b"t" + NON_UTF8
        elif where == "ruri":
            fields["ruri"] = b"sip:b" + NON_UTF8 + b"b@" + DOMAIN.encode()
        else:
            fields["extra"] = (
                b'Authorization: Digest username="alice", realm="example.test", nonce="abc", '
                b'uri="sip:' + NON_UTF8 + b'@example.test", response="0123456789abcdef'
                b'0123456789abcdef"\r\n')
        refused = await client.exchange(client.request(method, **fields))
        assert refused.status == 400
        assert "not UTF-8" in refused.reason
    finally:
        client.close()
    assert tracebacks(gateway) == []


async def test_non_utf8_instance_id_is_refused_and_binds_nothing(gateway: GatewayProcess) -> None:
    client = await UdpClient.open(gateway)
    host, port = client.peer.address
    try:
        contact = (f"Contact: <sip:alice@{host}:{port}>;+sip.instance=\"<urn:uuid:".encode()
                   + NON_UTF8 + b'>";reg-id=1\r\n')
        refused = await client.authenticated(
            "REGISTER", gateway.users["alice"], ruri=b"sip:" + DOMAIN.encode(),
            extra=contact + b"Supported: gruu, outbound\r\n")
        assert refused.status == 400, refused.start_line()
        assert "not UTF-8" in refused.reason
    finally:
        client.close()
    assert await bindings_count(gateway_metrics_url(gateway)) == 0
    assert tracebacks(gateway) == []


async def test_latin1_subject_is_still_relayed_as_free_text() -> None:
    """Legacy phones write Subject or User-Agent in Latin-1: that stays allowed."""
    message = parse_message(
        b"MESSAGE sip:bob@example.test SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n"
        b"From: <sip:alice@example.test>;tag=1\r\nTo: <sip:bob@example.test>\r\n"
        b"Call-ID: c1\r\nCSeq: 1 MESSAGE\r\nSubject: Gr\xfc\xdfe\r\nContent-Length: 0\r\n\r\n")
    message.validate()
    assert b"Subject: Gr\xfc\xdfe\r\n" in message.to_bytes()


# --- malformed SDP ------------------------------------------------------------------------------
WEBRTC_OFFER_HEAD = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:"
    "C2:43:F0:A1:58:D0:A1:2C:19:08\r\na=setup:actpass\r\na=ice-ufrag:Qb7x\r\n"
    "a=ice-pwd:V0Zl3Y2p8kH9fJq1mN4rT6wX\r\n"
)
MALFORMED_MEDIA = {
    "negative port": "m=audio -1 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n",
    "no clock rate": "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=rtpmap:0 PCMU\r\na=rtcp-mux\r\n",
    "clock not a number": "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/abc\r\n",
}


async def register_over_udp(gateway: GatewayProcess, user: str) -> UdpClient:
    """A UDP phone registered as user; the caller keeps it open to see what reaches it."""
    phone = await UdpClient.open(gateway)
    host, port = phone.peer.address
    ok = await phone.authenticated(
        "REGISTER", gateway.users[user], user=user.encode(), ruri=b"sip:" + DOMAIN.encode(),
        extra=f"Expires: 300\r\nContact: <sip:{user}@{host}:{port}>\r\n".encode())
    assert ok.status == 200, ok.start_line()
    return phone


async def wait_for_metric(gateway: GatewayProcess, name: str, expected: float,
                          timeout: float = 3.0) -> float:
    deadline = asyncio.get_running_loop().time() + timeout
    value = await metric(gateway, name)
    while value != expected and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
        value = await metric(gateway, name)
    return value


@pytest.mark.parametrize("case", sorted(MALFORMED_MEDIA))
async def test_malformed_sdp_offer_is_488_and_leaves_no_dialog_or_media(
    gateway: GatewayProcess, case: str,
) -> None:
    """A browser-style offer from a UDP caller to a UDP phone is anchored: its SDP is parsed."""
    bob = await register_over_udp(gateway, "bob")
    alice = await UdpClient.open(gateway)
    try:
        refused = await alice.authenticated(
            "INVITE", gateway.users["alice"],
            body=(WEBRTC_OFFER_HEAD + MALFORMED_MEDIA[case]).encode())
        assert refused.status == 488, refused.start_line()
        assert "malformed SDP" in refused.reason
        assert await bob.peer.nothing_within(0.5), "bob was sent a malformed offer"
    finally:
        alice.close()
        bob.close()
    assert await wait_for_metric(gateway, "ws2sip_dialogs", 0) == 0
    assert await wait_for_metric(gateway, "ws2sip_media_sessions", 0) == 0
    assert tracebacks(gateway) == []


# --- challenges do not amplify ------------------------------------------------------------------
AMPLIFICATION_WATCH = 3.0  # seconds: timer G would have resent a stateful 407 three times


async def responses_within(client: UdpClient, seconds: float) -> list[Response]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    received: list[Response] = []
    while (left := deadline - loop.time()) > 0:
        try:
            _, data = await client.peer.next(timeout=left)
        except TimeoutError:
            break
        message = parse_message(data)
        assert isinstance(message, Response)
        received.append(message)
    return received


@pytest.mark.parametrize(("method", "challenge"), [("INVITE", 407), ("REGISTER", 401)])
async def test_unauthenticated_request_draws_one_stateless_challenge(
    gateway: GatewayProcess, method: str, challenge: int,
) -> None:
    client = await UdpClient.open(gateway)
    try:
        ruri = b"sip:" + DOMAIN.encode() if method == "REGISTER" else b"sip:bob@" + DOMAIN.encode()
        request = client.request(method, ruri=ruri)
        client.peer.send(request, client.gateway)
        answers = await responses_within(client, AMPLIFICATION_WATCH)
        assert [r.status for r in answers] == [challenge]
        assert await metric(gateway, "ws2sip_transactions") == 0, "the challenge kept state"
        # A retransmission of the request is answered again, once: 1:1, never more.
        client.peer.send(request, client.gateway)
        assert [r.status for r in await responses_within(client, 1.0)] == [challenge]
    finally:
        client.close()


# --- replies go back over the transport the request came on -------------------------------------
async def test_udp_request_with_a_tls_via_gets_its_420_over_udp(
    gateway_factory: GatewayFactory,
) -> None:
    """RFC 4475 bext01 (a TLS Via, unsupported Proxy-Require) sent over UDP: the 420 reaches the
    sender instead of a TLS connection attempt to fold-and-staple.example.com."""
    gateway = await gateway_factory(users=users(), domain="example.com", transports=("udp",))
    client = await UdpClient.open(gateway)
    try:
        answer = await client.exchange(load_torture("bext01"))
        assert answer.status == 420
        assert answer.call_id == "bext01.0ha0isndaksdj"
        assert answer.get("unsupported") == "noproxiessupportthis, nordoanyproxiessupportthis"
    finally:
        client.close()
    assert tracebacks(gateway) == []



# --- bounded tables -----------------------------------------------------------------------------
VALID_WEBRTC_AUDIO = ("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n"
                      "a=rtcp-mux\r\na=mid:0\r\na=sendrecv\r\n")


def assert_full(response: Response, what: str) -> None:
    assert response.status == 503, response.start_line()
    assert what in response.reason
    assert response.get("retry-after") == "10"


async def options_to_the_gateway(client: UdpClient) -> Response:
    return await client.exchange(client.request("OPTIONS", ruri=b"sip:" + DOMAIN.encode()))


async def test_flow_table_is_bounded(gateway_factory: GatewayFactory) -> None:
    gateway = await gateway_factory(users=users(), domain=DOMAIN, transports=("udp", "ws"),
                                    extra_args=["--max-flows", "2"])
    clients = [await UdpClient.open(gateway) for _ in range(3)]
    try:
        for client in clients[:2]:
            assert (await options_to_the_gateway(client)).status == 200
        assert_full(await options_to_the_gateway(clients[2]), "too many peers")
        assert await metric(gateway, "ws2sip_flows") == 2
        async with aiohttp.ClientSession() as session, session.ws_connect(
                gateway.ws_url.replace("http", "ws"), protocols=("sip",)) as _:
            pytest.fail("a WebSocket was accepted past the flow bound")
    except aiohttp.WSServerHandshakeError as refused:
        assert refused.status == 503
    finally:
        for client in clients:
            client.close()
    assert tracebacks(gateway) == []


async def test_transaction_table_is_bounded(gateway_factory: GatewayFactory) -> None:
    """An OPTIONS answered over UDP keeps its transaction for timer J (32 s)."""
    gateway = await gateway_factory(users=users(), domain=DOMAIN, transports=("udp", "ws"),
                                    extra_args=["--max-transactions", "2"])
    client = await UdpClient.open(gateway)
    try:
        for _ in range(2):
            assert (await options_to_the_gateway(client)).status == 200
        assert_full(await options_to_the_gateway(client), "too many transactions")
        assert await metric(gateway, "ws2sip_transactions") == 2
    finally:
        client.close()
    assert tracebacks(gateway) == []


async def test_dialog_table_is_bounded(gateway_factory: GatewayFactory) -> None:
    gateway = await gateway_factory(users=users(), domain=DOMAIN, transports=("udp", "ws"),
                                    extra_args=["--max-dialogs", "1"])
    bob = await register_over_udp(gateway, "bob")
    alice = await UdpClient.open(gateway)
    try:
        password = gateway.users["alice"]
        alice.peer.send(await alice.authenticated_request("INVITE", password), alice.gateway)
        ringing = await bob.peer.next_message()  # bob never answers: the dialog stays early
        assert ringing.start_line().startswith("INVITE ")
        assert_full(await alice.authenticated("INVITE", password), "too many dialogs")
        assert await metric(gateway, "ws2sip_dialogs") == 1
    finally:
        alice.close()
        bob.close()
    assert tracebacks(gateway) == []


async def test_media_sessions_are_bounded(gateway_factory: GatewayFactory) -> None:
    gateway = await gateway_factory(users=users(), domain=DOMAIN, transports=("udp", "ws"),
                                    extra_args=["--max-media-sessions", "1"])
    bob = await register_over_udp(gateway, "bob")
    alice = await UdpClient.open(gateway)
    offer = (WEBRTC_OFFER_HEAD + VALID_WEBRTC_AUDIO).encode()
    try:
        password = gateway.users["alice"]
        alice.peer.send(await alice.authenticated_request("INVITE", password, body=offer),
                        alice.gateway)
        anchored = await bob.peer.next_message()
        assert anchored.start_line().startswith("INVITE ")
        assert b"RTP/AVP" in anchored.body  # the offer was rewritten for the plain phone
        assert_full(await alice.authenticated("INVITE", password, body=offer),
                    "too many media sessions")
        assert await metric(gateway, "ws2sip_media_sessions") == 1
        assert await wait_for_metric(gateway, "ws2sip_dialogs", 1) == 1  # the refused one went
    finally:
        alice.close()
        bob.close()
    assert tracebacks(gateway) == []


async def test_subscription_dialog_lasts_as_long_as_its_expires(gateway: GatewayProcess) -> None:
    """SUBSCRIBE with Expires: 1, accepted: its dialog goes after the Expires and the grace for
    the final NOTIFY (10 s), not after an hour or more."""
    bob = await register_over_udp(gateway, "bob")
    alice = await UdpClient.open(gateway)
    try:
        alice.peer.send(await alice.authenticated_request(
            "SUBSCRIBE", gateway.users["alice"], extra=b"Event: presence\r\nExpires: 1\r\n"),
            alice.gateway)
        subscribe = await bob.peer.next_message()
        assert isinstance(subscribe, Request) and subscribe.method == "SUBSCRIBE"
        accepted = subscribe.response(200, to_tag="bobtag")
        accepted.add("Expires", "1")
        accepted.add("Contact", f"<sip:bob@{bob.peer.address[0]}:{bob.peer.address[1]}>")
        bob.peer.send(accepted.to_bytes(), bob.gateway)
        assert (await alice.peer.next_message()).status == 200  # type: ignore[union-attr]
        assert await metric(gateway, "ws2sip_dialogs") == 1
        assert await wait_for_metric(gateway, "ws2sip_dialogs", 0, timeout=20.0) == 0
    finally:
        alice.close()
        bob.close()


def test_sdp_text_fields_that_look_like_numbers_stay_text() -> None:
    """sdp_transform turns all-digit values into ints; the model keeps them text, or the
    codec matching raised AttributeError (found by tests/gateway/test_fuzz_full_path.py)."""
    parsed = sdp.parse(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        "m=audio 4000 RTP/AVP 111 0\r\na=rtpmap:111 123/48000\r\na=fmtp:111 7\r\n"
        "a=setup:1\r\n")
    (media,) = parsed.media
    assert [codec.name for codec in media.codecs] == ["123", "PCMU"]
    assert media.codecs[0].fmtp == "7" and media.setup == "1"
    assert [codec.name for codec in relayable("audio", media.codecs)] == ["PCMU"]


async def test_bindings_per_address_of_record_are_bounded(
    gateway_factory: GatewayFactory,
) -> None:
    """Registering new contacts without end keeps the newest max_contacts, not all of them."""
    gateway = await gateway_factory(users=users(), domain=DOMAIN, transports=("udp", "ws"),
                                    extra_args=["--max-contacts", "2"])
    client = await UdpClient.open(gateway)
    host, port = client.peer.address
    try:
        for device in range(4):
            contact = f"Contact: <sip:alice-{device}@{host}:{port}>\r\nExpires: 300\r\n"
            ok = await client.authenticated("REGISTER", gateway.users["alice"],
                                            ruri=b"sip:" + DOMAIN.encode(), extra=contact.encode())
            assert ok.status == 200, ok.start_line()
        kept = " ".join(ok.get_all("contact"))
        assert f"alice-3@{host}" in kept and "alice-0@" not in kept and "alice-1@" not in kept
    finally:
        client.close()
    assert await bindings_count(gateway_metrics_url(gateway)) == 2


def test_unusable_ice_candidates_are_skipped() -> None:
    """'a=candidate:1  udp …' (no component) raised ValueError in the ICE leg, after the media
    session was made (found by bench/fuzz_run.py); it is skipped like an unresolvable one."""
    parsed = sdp.parse(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n"
        "a=candidate:1  udp 2122260223 127.0.0.1 54402 typ host\r\n"
        "a=candidate:2 1 udp 2122260223 127.0.0.1 99999 typ host\r\n"
        "a=candidate:3 1 udp 2122260223 127.0.0.1 54404 typ host\r\n")
    (media,) = parsed.media
    assert [(c["component"], c["port"]) for c in media.candidates] == [(1, 54404)]
