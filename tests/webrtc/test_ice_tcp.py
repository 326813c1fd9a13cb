"""ICE-TCP (webrtc/ice_tcp.py): RFC 4571 framing, and the one listener handing connections to
the ICE connection their first STUN check names, against a real listener and real
IceConnections. Hostile peers (junk, oversized frames, strangers, silence, floods) are closed."""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import AsyncIterator

import pytest
from aioice import stun
from aioice.candidate import candidate_priority

from webrtc import ice_tcp
from webrtc.codecs import PCMU
from webrtc.ice import IceConnection, sdp_candidate
from webrtc.ice_tcp import (
    MAX_CONNECTIONS_PER_ICE,
    FrameReader,
    FramingError,
    IceTcpListener,
    frame,
    tcp_candidate_priority,
)
from webrtc.ports import PortPool
from webrtc.sdp import (
    Fingerprint,
    MediaSection,
    SdpOrigin,
    WebRtcTransportParams,
    parse,
    write_webrtc,
)
from webrtc.workers import MediaWorkers

CLOSE_TIMEOUT = 10.0  # a limit, not an expectation: the machine may be loaded


def test_frames_split_across_reads_and_joined_in_one() -> None:
    reader = FrameReader()
    stream = frame(b"\x00\x01stun") + frame(b"") + frame(b"\x80rtp" * 100) + frame(b"\x16dtls")
    frames: list[bytes] = []
    for start in range(0, len(stream), 7):  # every frame boundary falls somewhere in a read
        frames += reader.feed(stream[start:start + 7])
    assert frames == [b"\x00\x01stun", b"\x80rtp" * 100, b"\x16dtls"]  # the empty one skipped
    assert reader.buffered == 0
    assert reader.feed(stream) == frames


def test_a_frame_longer_than_the_maximum_is_refused_before_it_is_buffered() -> None:
    reader = FrameReader(max_frame=2048)
    assert reader.feed(frame(b"x" * 2048)) == [b"x" * 2048]
    with pytest.raises(FramingError, match="65535"):
        reader.feed(b"\xff\xff" + b"x" * 100)
    assert reader.buffered < 2048 + 2 + 100


def test_tcp_candidates_rank_below_udp_host_and_server_reflexive_ones() -> None:
    tcp = tcp_candidate_priority(1)
    assert tcp < candidate_priority(1, "srflx") < candidate_priority(1, "host")
    assert tcp > candidate_priority(1, "relay")
    assert tcp >> 24 == 90 and (tcp >> 8) & 0xFFFF == (4 << 13) + 8191 and tcp & 0xFF == 255


@pytest.fixture
async def listener() -> AsyncIterator[IceTcpListener]:
    tcp = IceTcpListener("127.0.0.1", 0, max_pending=4)
    await tcp.start()
    try:
        yield tcp
    finally:
        await tcp.close()


@pytest.fixture
async def ice_connections(listener: IceTcpListener) -> AsyncIterator[list[IceConnection]]:
    base = random.randrange(30000, 60000, 2)
    pool = PortPool("127.0.0.1", base, base + 40)
    connections = [
        IceConnection(pool=pool, public_host="127.0.0.1", ice_controlling=False,
                      on_datagram=lambda data: None, tcp_listener=listener)
        for _ in range(2)
    ]
    for connection in connections:
        await connection.gather_candidates()
        connection.remote_username, connection.remote_password = "brwsr", "b" * 22
    try:
        yield connections
    finally:
        for connection in connections:
            await connection.close()


def binding_request(username: str, password: str, *, controlling: bool = True) -> bytes:
    request = stun.Message(message_method=stun.Method.BINDING,
                           message_class=stun.Class.REQUEST)
    request.attributes.update({"USERNAME": username, "PRIORITY": 1_000_000})
    if controlling:
        request.attributes.update({"ICE-CONTROLLING": 1, "USE-CANDIDATE": None})
    else:
        request.attributes["ICE-CONTROLLED"] = 1
    request.add_message_integrity(password.encode())
    request.add_fingerprint()
    return bytes(request)


async def connect(listener: IceTcpListener) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", listener.port)


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    (length,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 10))
    return await asyncio.wait_for(reader.readexactly(length), 10)


async def assert_closed(reader: asyncio.StreamReader) -> None:
    """The gateway closed the connection: EOF or a reset, within CLOSE_TIMEOUT."""
    try:
        data = await asyncio.wait_for(reader.read(4096), CLOSE_TIMEOUT)
    except ConnectionResetError:
        return
    assert data == b"", f"expected the connection closed, got {data[:40]!r}"


async def test_offers_a_passive_tcp_candidate_on_the_advertised_port() -> None:
    tcp = IceTcpListener("127.0.0.1", 0, advertised_port=443)
    await tcp.start()
    base = random.randrange(30000, 60000, 2)
    connection = IceConnection(pool=PortPool("127.0.0.1", base, base + 10),
                               public_host="192.0.2.7", ice_controlling=False,
                               on_datagram=lambda data: None, tcp_listener=tcp)
    try:
        await connection.gather_candidates()
        udp, tcp_candidate = (sdp_candidate(c) for c in connection.local_candidates)
        assert udp["protocol"] == "udp" and "tcptype" not in udp
        assert (tcp_candidate["protocol"], tcp_candidate["ip"], tcp_candidate["port"],
                tcp_candidate["tcptype"], tcp_candidate["type"]) == (
            "tcp", "192.0.2.7", 443, "passive", "host")
        assert tcp.target(connection.local_username) is connection
        sdp = write_webrtc(SdpOrigin("192.0.2.7"), "192.0.2.7",
                           [MediaSection(kind="audio", port=4000, codecs=[PCMU], mid="0")],
                           WebRtcTransportParams("ufrag", "p" * 22, [udp, tcp_candidate],
                                                 Fingerprint("sha-256", "00"), "actpass"))
        assert " 192.0.2.7 443 typ host tcptype passive\r\n" in sdp
    finally:
        await connection.close()
        await tcp.close()
    assert tcp.target(connection.local_username) is None


async def test_the_browsers_tcp_candidates_are_left_out(
    ice_connections: list[IceConnection],
) -> None:
    """The gateway is passive only: a browser's active (port 9), passive and simultaneous-open
    candidates are skipped without an error; its checks over the connection reveal it."""
    connection = ice_connections[0]
    connection.add_sdp_candidates([
        {"foundation": "1", "component": 1, "protocol": "tcp", "priority": 1518280447,
         "ip": "127.0.0.1", "port": port, "type": "host", "tcptype": tcptype}
        for port, tcptype in ((9, "active"), (50000, "passive"), (50001, "so"))
    ])
    await asyncio.sleep(0)
    assert connection.remote_candidates == []


async def test_a_check_reaches_the_ice_connection_its_username_names(
    listener: IceTcpListener, ice_connections: list[IceConnection],
) -> None:
    first, second = ice_connections
    assert first.local_username != second.local_username
    reader, writer = await connect(listener)
    request = binding_request(f"{second.local_username}:brwsr", second.local_password)
    framed = frame(request)
    writer.write(framed[:30])  # one frame over two segments: the listener reassembles it
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(framed[30:])
    response = stun.parse_message(await read_frame(reader))
    assert response.message_class == stun.Class.RESPONSE
    assert response.transaction_id == stun.parse_message(request).transaction_id
    assert response.check_message_integrity(second.local_password.encode())
    local_address = writer.get_extra_info("sockname")
    assert response.attributes["XOR-MAPPED-ADDRESS"] == (local_address[0], local_address[1])
    assert listener.pending_connections == 0
    tcp_protocols = [p for p in second._protocols if p.local_candidate.transport == "tcp"]
    assert len(tcp_protocols) == 1
    assert not any(p.local_candidate.transport == "tcp" for p in first._protocols)
    writer.close()


@pytest.mark.parametrize("first_bytes", [
    pytest.param(frame(b"\x80" + bytes(40)), id="rtp-before-stun"),
    pytest.param(frame(b"\x00\x01" + bytes(30)), id="malformed-stun"),
    pytest.param(b"\xff\xff" + bytes(100), id="frame-over-the-maximum"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: gateway\r\n\r\n", id="http"),
])
async def test_junk_first_frames_close_the_connection(
    listener: IceTcpListener, ice_connections: list[IceConnection], first_bytes: bytes,
) -> None:
    reader, writer = await connect(listener)
    writer.write(first_bytes)
    await assert_closed(reader)
    writer.close()
    assert listener.refused == 1


async def test_strangers_and_wrong_passwords_are_closed(
    listener: IceTcpListener, ice_connections: list[IceConnection],
) -> None:
    known = ice_connections[0]
    for username, password in (("nobody:brwsr", known.local_password),
                               (f"{known.local_username}:brwsr", "w" * 22)):
        reader, writer = await connect(listener)
        writer.write(frame(binding_request(username, password)))
        await assert_closed(reader)
        writer.close()
    assert listener.refused == 2
    assert not any(p.local_candidate.transport == "tcp" for p in known._protocols)


async def test_silent_and_excess_connections_are_closed(
    listener: IceTcpListener, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ice_tcp, "AUTH_TIMEOUT_SECONDS", 0.3)
    silent = [await connect(listener) for _ in range(4)]  # the fixture's max_pending
    excess_reader, excess_writer = await connect(listener)
    await assert_closed(excess_reader)  # at once: four wait to authenticate already
    for reader, writer in silent:
        await assert_closed(reader)  # after AUTH_TIMEOUT_SECONDS
        writer.close()
    excess_writer.close()
    assert listener.refused == 5 and listener.pending_connections == 0


async def test_one_address_cannot_hold_every_waiting_slot(
    listener: IceTcpListener, ice_connections: list[IceConnection],
) -> None:
    listener.max_pending_per_address = 2
    silent = [await connect(listener) for _ in range(2)]
    third_reader, third_writer = await connect(listener)
    await assert_closed(third_reader)  # at once, though the listener could take 4
    assert listener.refused == 1
    for _, writer in silent:
        writer.close()
    third_writer.close()


async def test_media_workers_get_their_connections_from_the_one_listener() -> None:
    """The listener lives in the gateway process; each connection goes, with the check already
    read, to the worker whose index leads the ufrag, and that worker answers the check."""
    base = random.randrange(30000, 60000, 2)
    workers = MediaWorkers(2, bind_host="127.0.0.1", port_min=base, port_max=base + 40,
                           ice_tcp_listen=("127.0.0.1", 0))
    await workers.start()
    try:
        sessions = [workers.create_session(f"call-{index}") for index in range(2)]
        offers = [parse(await session.create_offer("webrtc")) for session in sessions]
        for offer in offers:
            audio = offer.first("audio")
            assert audio is not None and audio.ice_ufrag and audio.ice_pwd
            tcp_candidates = [c for c in audio.candidates if c["protocol"] == "tcp"]
            assert len(tcp_candidates) == 1, audio.candidates
            reader, writer = await asyncio.open_connection("127.0.0.1", tcp_candidates[0]["port"])
            # The gateway offered: it controls, the "browser" answering is controlled.
            writer.write(frame(binding_request(f"{audio.ice_ufrag}:brwsr", audio.ice_pwd,
                                               controlling=False)))
            response = stun.parse_message(await read_frame(reader))
            assert response.message_class == stun.Class.RESPONSE
            assert response.check_message_integrity(audio.ice_pwd.encode())
            writer.close()
        ufrags = [media.ice_ufrag for offer in offers for media in offer.media]
        assert {str(ufrag)[:2] for ufrag in ufrags} == {"00", "01"}  # each worker's index

        reader, writer = await asyncio.open_connection("127.0.0.1", tcp_candidates[0]["port"])
        writer.write(frame(binding_request("99nobody:brwsr", "p" * 22)))
        await assert_closed(reader)  # no worker 99: closed in the gateway process
        writer.close()
    finally:
        await workers.close()


async def test_a_call_takes_a_bounded_number_of_connections(
    listener: IceTcpListener, ice_connections: list[IceConnection],
) -> None:
    connection = ice_connections[0]
    check = frame(binding_request(f"{connection.local_username}:brwsr",
                                  connection.local_password))
    open_streams = []
    for _ in range(MAX_CONNECTIONS_PER_ICE):
        reader, writer = await connect(listener)
        writer.write(check)
        await read_frame(reader)  # answered: taken
        open_streams.append((reader, writer))
    reader, writer = await connect(listener)
    writer.write(check)
    await assert_closed(reader)
    writer.close()
    # One closes: its place is free again.
    open_streams.pop()[1].close()
    for _ in range(100):
        await asyncio.sleep(0.05)
        reader, writer = await connect(listener)
        writer.write(check)
        try:
            await read_frame(reader)
            break
        except (asyncio.IncompleteReadError, ConnectionResetError):
            writer.close()
    else:
        raise AssertionError("a closed connection's place was not freed")
    writer.close()
    for _, open_writer in open_streams:
        open_writer.close()
