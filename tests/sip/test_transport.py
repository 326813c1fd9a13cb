"""Transport layer over real loopback sockets: UDP, TCP, TLS, and a gateway-style flow."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from sip.errors import SipError
from sip.flow import Flow
from sip.framing import PING, PONG
from sip.message import Request, Response, parse_message
from sip.resolver import Target
from sip.transport import TransportLayer
from tests.sip.core_peer import RawUdpPeer, raw_request


class Inbox:
    def __init__(self, transport: TransportLayer) -> None:
        self.messages: asyncio.Queue[tuple[Request | Response, Flow]] = asyncio.Queue()
        self.closed_flows: asyncio.Queue[Flow] = asyncio.Queue()
        transport.on_message = lambda message, flow: self.messages.put_nowait((message, flow))
        transport.on_flow_closed = self.closed_flows.put_nowait

    async def next(self) -> tuple[Request | Response, Flow]:
        return await asyncio.wait_for(self.messages.get(), 5)


class LoopbackFlow(Flow):
    """A flow the way the gateway adds WebSocket ones: bytes handed to send() are kept."""

    def __init__(self, transport: str = "ws", flow_id: str = "ws:test") -> None:
        super().__init__(flow_id, transport, ("127.0.0.1", 8080), ("127.0.0.1", 50000),
                         secure=False)
        self.sent: list[bytes] = []
        self._closed = False

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def close(self) -> None:
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed


@pytest.fixture
async def layer() -> AsyncIterator[TransportLayer]:
    transport = TransportLayer()
    await transport.listen_udp("127.0.0.1", 0)
    await transport.listen_tcp("127.0.0.1", 0)
    yield transport
    await transport.close()


@pytest.fixture
async def peer() -> AsyncIterator[RawUdpPeer]:
    raw = await RawUdpPeer.open()
    yield raw
    raw.close()


def udp_address(layer: TransportLayer) -> tuple[str, int]:
    bound = layer.listening("udp")
    assert bound is not None
    return bound


# --- §18.2.1 / RFC 3581 on requests ------------------------------------------------------------
async def test_udp_request_gets_received_and_rport(layer: TransportLayer, peer: RawUdpPeer) -> None:
    inbox = Inbox(layer)
    peer.send(raw_request("OPTIONS", "192.0.2.7:5999"), udp_address(layer))
    message, flow = await inbox.next()
    assert isinstance(message, Request)
    via = message.top_via
    assert via.params["received"] == "127.0.0.1"
    assert via.params["rport"] == str(peer.address[1])
    assert (flow.transport, flow.remote, flow.reliable) == ("udp", peer.address, False)
    assert layer.flow_by_id(flow.id) is flow


async def test_via_matching_the_source_without_rport_is_left_alone(
    layer: TransportLayer, peer: RawUdpPeer
) -> None:
    inbox = Inbox(layer)
    peer.send(raw_request("OPTIONS", "127.0.0.1:5999", rport=False), udp_address(layer))
    message, _ = await inbox.next()
    assert "received" not in message.top_via.params


# --- §18.2.2 / RFC 3581 on responses -----------------------------------------------------------
async def test_udp_response_goes_to_received_and_rport(
    layer: TransportLayer, peer: RawUdpPeer
) -> None:
    inbox = Inbox(layer)
    peer.send(raw_request("OPTIONS", "192.0.2.7:5999"), udp_address(layer))
    request, _ = await inbox.next()
    assert isinstance(request, Request)
    layer.send_response(request.response(200), None)
    response = await peer.next_message()
    assert isinstance(response, Response) and response.status == 200


async def test_udp_response_without_rport_goes_to_sent_by_port(
    layer: TransportLayer, peer: RawUdpPeer
) -> None:
    inbox = Inbox(layer)
    listener = await RawUdpPeer.open()
    try:
        sent_by = f"127.0.0.1:{listener.address[1]}"
        peer.send(raw_request("OPTIONS", sent_by, rport=False), udp_address(layer))
        request, flow = await inbox.next()
        assert isinstance(request, Request)
        layer.send_response(request.response(200), flow)
        response = await listener.next_message()
        assert isinstance(response, Response) and response.status == 200
        assert await peer.nothing_within(0.2)
    finally:
        listener.close()


async def test_ipv6_udp_request_and_response() -> None:
    # IPv6 sockets report 4-tuple source addresses: flows and responses must still work,
    # compiled (setup.py) or not.
    layer = TransportLayer()
    await layer.listen_udp("::1", 0)
    peer = await RawUdpPeer.open("::1")
    try:
        inbox = Inbox(layer)
        peer.send(raw_request("OPTIONS", f"[::1]:{peer.address[1]}"), udp_address(layer))
        request, flow = await inbox.next()
        assert isinstance(request, Request)
        assert flow.remote == ("::1", peer.address[1])
        assert request.top_via.params["rport"] == str(peer.address[1])
        layer.send_response(request.response(200), flow)
        response = await peer.next_message()
        assert isinstance(response, Response) and response.status == 200
    finally:
        peer.close()
        await layer.close()


# --- malformed input ---------------------------------------------------------------------------
async def test_malformed_request_is_answered_with_400(
    layer: TransportLayer, peer: RawUdpPeer
) -> None:
    inbox = Inbox(layer)
    bad_cseq = raw_request("OPTIONS", "127.0.0.1:5999").replace("CSeq: 1 OPTIONS", "CSeq: x OPT")
    peer.send(bad_cseq, udp_address(layer))
    response = await peer.next_message()
    assert isinstance(response, Response) and response.status == 400
    assert response.call_id == "raw-call-1"
    no_colon = raw_request("OPTIONS", "127.0.0.1:5999").replace(
        "Max-Forwards: 70", "this line has no colon"
    )
    peer.send(no_colon, udp_address(layer))
    response = await peer.next_message()
    assert isinstance(response, Response) and response.status == 400
    assert inbox.messages.empty()


async def test_request_without_call_id_is_dropped(layer: TransportLayer, peer: RawUdpPeer) -> None:
    inbox = Inbox(layer)
    peer.send(raw_request("OPTIONS", "127.0.0.1:5999").replace("Call-ID: raw-call-1\r\n", ""),
              udp_address(layer))
    peer.send(raw_request("OPTIONS", "127.0.0.1:5999", call_id="good"), udp_address(layer))
    message, _ = await inbox.next()
    assert message.call_id == "good"
    assert await peer.nothing_within(0.2)


async def test_response_whose_via_is_not_ours_is_dropped(
    layer: TransportLayer, peer: RawUdpPeer
) -> None:
    inbox = Inbox(layer)
    host, port = udp_address(layer)
    foreign = _response_text(f"10.9.9.9:{port}", call_id="foreign")
    ours = _response_text(f"{host}:{port}", call_id="ours")
    peer.send(foreign, (host, port))
    peer.send(ours, (host, port))
    message, _ = await inbox.next()
    assert message.call_id == "ours"
    assert inbox.messages.empty()


def _response_text(sent_by: str, call_id: str) -> str:
    return (
        "SIP/2.0 200 OK\r\n"
        f"Via: SIP/2.0/UDP {sent_by};branch=z9hG4bKresp\r\n"
        "From: <sip:a@127.0.0.1>;tag=a\r\nTo: <sip:b@127.0.0.1>;tag=b\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )


# --- streams -----------------------------------------------------------------------------------
async def test_tcp_partial_and_pipelined_messages_and_keepalive(layer: TransportLayer) -> None:
    inbox = Inbox(layer)
    tcp = layer.listening("tcp")
    assert tcp is not None
    reader, writer = await asyncio.open_connection(*tcp)
    first = raw_request("MESSAGE", "127.0.0.1:1", call_id="partial",
                        extra="Content-Type: text/plain\r\n").replace(
        "Content-Length: 0\r\n\r\n", "Content-Length: 5\r\n\r\nhello").encode()
    for start in range(0, len(first), 40):
        writer.write(first[start:start + 40])
        await writer.drain()
        await asyncio.sleep(0.005)
    pipelined = (raw_request("OPTIONS", "127.0.0.1:1", call_id="p1")
                 + raw_request("OPTIONS", "127.0.0.1:1", call_id="p2")).encode()
    writer.write(pipelined)
    writer.write(PING)
    await writer.drain()
    received = [await inbox.next() for _ in range(3)]
    assert [message.call_id for message, _ in received] == ["partial", "p1", "p2"]
    assert received[0][0].body == b"hello"
    assert {flow.id for _, flow in received} == {received[0][1].id}
    assert received[0][1].transport == "tcp" and received[0][1].reliable
    assert await asyncio.wait_for(reader.readexactly(2), 5) == PONG
    writer.close()
    closed = await asyncio.wait_for(inbox.closed_flows.get(), 5)
    assert closed is received[0][1]
    assert layer.flow_by_id(closed.id) is None


async def test_gateway_flow_keepalive_messages_and_close(layer: TransportLayer) -> None:
    inbox = Inbox(layer)
    flow = LoopbackFlow()
    layer.register_flow(flow)
    layer.receive(PING, flow)
    assert flow.sent == [PONG]
    layer.receive(raw_request("OPTIONS", "abc.invalid", rport=False).encode(), flow)
    message, via_flow = await inbox.next()
    assert via_flow is flow
    assert message.top_via.params["received"] == "127.0.0.1"
    assert isinstance(message, Request)
    layer.send_response(message.response(200), flow)
    assert parse_message(flow.sent[-1]).status == 200  # type: ignore[union-attr]
    layer.unregister_flow(flow)
    assert await asyncio.wait_for(inbox.closed_flows.get(), 5) is flow
    assert layer.flow_by_id(flow.id) is None


async def test_tcp_connection_is_reused_and_connect_failure_is_503(layer: TransportLayer) -> None:
    server = TransportLayer()
    inbox = Inbox(server)
    try:
        address = await server.listen_tcp("127.0.0.1", 0)
        target = Target("tcp", *address)
        first = await layer.send_request(_request(layer, "tcp", "one"), target)
        second = await layer.send_request(_request(layer, "tcp", "two"), target)
        assert first is second
        assert [(await inbox.next())[0].call_id for _ in range(2)] == ["one", "two"]
    finally:
        await server.close()
    with pytest.raises(SipError) as failure:
        await layer.send_request(_request(layer, "tcp", "three"), Target("tcp", "127.0.0.1",
                                                                         _closed_port()))
    assert failure.value.status == 503


async def test_response_on_closed_tcp_flow_opens_connection_to_sent_by(
    layer: TransportLayer,
) -> None:
    server = TransportLayer()
    server_inbox = Inbox(server)
    client_inbox = Inbox(layer)
    try:
        address = await server.listen_tcp("127.0.0.1", 0)
        client_flow = await layer.send_request(_request(layer, "tcp", "reopen"),
                                               Target("tcp", *address))
        request, server_flow = await server_inbox.next()
        assert isinstance(request, Request)
        client_flow.close()
        assert await asyncio.wait_for(server_inbox.closed_flows.get(), 5) is server_flow
        server.send_response(request.response(200), server_flow)
        response, new_flow = await client_inbox.next()
        assert isinstance(response, Response) and response.status == 200
        assert new_flow is not client_flow and new_flow.transport == "tcp"
    finally:
        await server.close()


async def test_tls_request_and_response(tmp_path: Path) -> None:
    server_context, client_context = _tls_contexts(tmp_path)
    server, client = TransportLayer(), TransportLayer()
    server_inbox, client_inbox = Inbox(server), Inbox(client)
    try:
        address = await server.listen_tls("127.0.0.1", 0, server_context)
        await client.listen_tls("127.0.0.1", 0, server_context)
        client.set_client_ssl_context(client_context)
        flow = await client.send_request(_request(client, "tls", "secure"), Target("tls", *address))
        assert flow.secure and flow.transport == "tls"
        request, server_flow = await server_inbox.next()
        assert isinstance(request, Request) and request.call_id == "secure"
        assert server_flow.secure and server_flow.reliable
        server.send_response(request.response(200), server_flow)
        response, response_flow = await client_inbox.next()
        assert isinstance(response, Response) and response.status == 200
        assert response_flow is flow
    finally:
        await client.close()
        await server.close()


async def test_idle_flows_are_closed() -> None:
    transport = TransportLayer(idle_timeout=0.2)
    inbox = Inbox(transport)
    peer = await RawUdpPeer.open()
    try:
        await transport.listen_udp("127.0.0.1", 0)
        peer.send(raw_request("OPTIONS", "127.0.0.1:1"), udp_address(transport))
        _, flow = await inbox.next()
        assert await asyncio.wait_for(inbox.closed_flows.get(), 5) is flow
        assert transport.flow_count == 0
    finally:
        peer.close()
        await transport.close()


# --- robustness --------------------------------------------------------------------------------
_VALID = raw_request("INVITE", "127.0.0.1:5999", extra="Contact: <sip:raw@127.0.0.1>\r\n").encode()


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_crash_receive(data: bytes) -> None:
    _feed_both_kinds(data)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.binary(max_size=4)), max_size=6))
def test_mutated_requests_never_crash_receive(edits: list[tuple[int, bytes]]) -> None:
    data = bytearray(_VALID)
    for position, replacement in edits:
        data[position:position + len(replacement)] = replacement
    _feed_both_kinds(bytes(data))


def _feed_both_kinds(data: bytes) -> None:
    transport = TransportLayer()
    delivered: list[Request | Response] = []
    transport.on_message = lambda message, _: delivered.append(message)
    for flow in (LoopbackFlow("udp", "udp:fuzz"), LoopbackFlow("ws", "ws:fuzz")):
        transport.receive(data, flow)
        for sent in flow.sent:
            # Whatever goes back is a well-formed SIP error response or a pong.
            if sent != PONG:
                answer = parse_message(sent)
                assert isinstance(answer, Response) and answer.status >= 400
    for message in delivered:
        message.validate()


# --- helpers -----------------------------------------------------------------------------------
def _request(layer: TransportLayer, transport: str, call_id: str) -> Request:
    return parse_message(raw_request("OPTIONS", "127.0.0.1:1", call_id=call_id).replace(
        "Via: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKraw1;rport",
        "Via: " + layer.via_value(transport, "z9hG4bK" + call_id),
    ).encode())  # type: ignore[return-value]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tls_contexts(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A self-signed certificate for 127.0.0.1, and contexts serving and trusting it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ws2sip test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client
