"""CPU per relayed packet over ICE-TCP (webrtc/ice_tcp.py) against the UDP path, measured the
way bench/media_path.py measures UDP (whose figures it prints first, from the same process).

A real IceTcpListener accepts a "browser" TCP connection, which authenticates with a real STUN
check; the relay's side then runs its real classes: the stream's read (recv, RFC 4571 deframing)
-> MediaFirstProtocol -> SRTP unprotect -> Forwarder -> PlainLeg -> UDP sendto, and the phone's
RTP (recv) -> Forwarder -> SRTP protect -> the nominated TCP pair -> framed write. The event
loop's reading of the TCP connection is paused and done here instead, one recv per frame (a
call sends 50 packets a second: each readiness finds one), so that only the relay's side is
timed (thread CPU time), as in media_path.py. The C relay path serves UDP sockets only: over
TCP every packet takes the Python path, whichever build this is. On a compiled install the
UDP browser -> phone direction is also measured through that C path, as the gateway relays it.

    python bench/ice_tcp_path.py --packets 100000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import socket
import struct
import sys
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aioice import stun  # noqa: E402
from aioice.candidate import Candidate  # noqa: E402
from aioice.ice import CandidatePair  # noqa: E402
from aiortc.rtcdtlstransport import SRTP_AES128_CM_SHA1_80  # noqa: E402
from pylibsrtp import Policy  # noqa: E402

from bench.media_path import _drain, _peer, _session  # noqa: E402
from bench.media_path import measure as measure_udp  # noqa: E402
from webrtc.datagram import _RELAY_PUMP  # noqa: E402
from webrtc.dtls import DtlsCertificate  # noqa: E402
from webrtc.forwarding import Forwarder, Route  # noqa: E402
from webrtc.ice_media import COMPONENT  # noqa: E402
from webrtc.ice_tcp import IceTcpListener, IceTcpStream, frame  # noqa: E402
from webrtc.plain import PlainLeg  # noqa: E402
from webrtc.ports import PortPool  # noqa: E402
from webrtc.relay_pumps import RelayPumps  # noqa: E402
from webrtc.srtp import SrtpSessions  # noqa: E402
from webrtc.webrtc_leg import WebRtcLeg  # noqa: E402

MAX_PACKETS = 500_000
PROFILE = "AES_CM_128_HMAC_SHA1_80"


def _check(username: str, password: str) -> bytes:
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    request.attributes.update({"USERNAME": username, "PRIORITY": 1, "ICE-CONTROLLING": 1,
                               "USE-CANDIDATE": None})
    request.add_message_integrity(password.encode())
    request.add_fingerprint()
    return frame(bytes(request))


async def measure_tcp(packets: int) -> None:
    profile = SRTP_AES128_CM_SHA1_80
    key = os.urandom(profile.key_length + profile.salt_length)
    listener = IceTcpListener("127.0.0.1", 0)
    await listener.start()
    phone = _peer()
    pool = PortPool("127.0.0.1", 42400, 42800)
    plain = PlainLeg(pool)
    await plain.open()
    phone_host, phone_port = phone.getsockname()
    plain.set_remote(phone_host, phone_port, None, False)
    leg = WebRtcLeg(pool=pool, public_host="127.0.0.1", certificate=DtlsCertificate(),
                    stun_server=None, tcp_listener=listener)
    leg._srtp = SrtpSessions(  # keys as a finished DTLS handshake would install them
        outbound=_session(key, profile.libsrtp_profile, Policy.SSRC_ANY_OUTBOUND),
        inbound=_session(key, profile.libsrtp_profile, Policy.SSRC_ANY_INBOUND),
        profile=PROFILE)
    await leg.prepare(ice_controlling=False)
    ice = leg._ice
    assert ice is not None and plain._rtp is not None
    ice.remote_username, ice.remote_password = "brwsr", "b" * 22

    browser = socket.create_connection(("127.0.0.1", listener.port))
    browser.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as browsers send media
    browser.sendall(_check(f"{ice.local_username}:brwsr", ice.local_password))
    for _ in range(200):  # the listener authenticates the connection and hands it to ICE
        await asyncio.sleep(0.01)
        tcp_protocols = [p for p in ice._protocols if p.local_candidate.transport == "tcp"]
        if tcp_protocols:
            break
    else:
        raise SystemExit("the ICE-TCP connection was not accepted")
    browser.setblocking(False)
    _drain(browser)  # the check's answer (and aioice's own check, unanswered here)
    protocol = tcp_protocols[0]
    stream = protocol.transport
    assert isinstance(stream, IceTcpStream) and stream._transport is not None
    # The pair ICE would nominate; the event loop's reads of the connection paused: done here.
    ice._nominated[COMPONENT] = CandidatePair(protocol, Candidate(
        foundation="1", component=COMPONENT, transport="tcp", priority=1,
        host="127.0.0.1", port=browser.getsockname()[1], type="prflx"))
    stream._transport.pause_reading()
    relay_side = socket.socket(fileno=os.dup(stream._transport.get_extra_info("socket").fileno()))
    relay_side.setblocking(False)  # as the event loop reads: no poll before each recv
    leg.on_rtp = Forwarder(routes={0: Route(0, plain.send_rtp)})
    plain.on_rtp = Forwarder(routes={0: Route(0, leg.send_rtp)})

    sender = _session(key, profile.libsrtp_profile, Policy.SSRC_ANY_OUTBOUND)
    payload = bytes(160)
    inbound = [frame(sender.protect(struct.pack("!BBHII", 0x80, 0, i & 0xFFFF,
                                                (i * 160) & 0xFFFFFFFF, 1) + payload))
               for i in range(packets)]
    read_buffer = bytearray(262_144)  # uvloop's read size
    view = memoryview(read_buffer)
    elapsed = 0.0
    for data in inbound:
        browser.send(data)
        while not select.select([relay_side], [], [], 5.0)[0]:  # there at once on loopback
            pass
        start = time.thread_time()
        # As uvloop reads: into its own buffer, handing over a bytes of what came.
        stream.data_received(bytes(view[:relay_side.recv_into(read_buffer)]))
        elapsed += time.thread_time() - start
        _drain(phone)
    assert isinstance(leg.on_rtp, Forwarder)
    if leg.on_rtp.stats.packets != packets:
        raise SystemExit(f"only {leg.on_rtp.stats.packets} of {packets} packets relayed")
    print(f"{PROFILE:24} ICE-TCP browser -> phone (recv, deframe, SRTP unprotect, forward, "
          f"sendto): {elapsed / packets * 1e6:.2f} µs/packet")

    outbound = [struct.pack("!BBHII", 0x80, 0, i & 0xFFFF, (i * 160) & 0xFFFFFFFF, 2) + payload
                for i in range(packets)]
    relay_address = plain._rtp.get_extra_info("sockname")
    readable = plain._rtp._readable
    elapsed = 0.0
    for offset in range(0, packets, 100):
        chunk = outbound[offset:offset + 100]
        for data in chunk:
            phone.sendto(data, relay_address)
        start = time.thread_time()
        for _ in chunk:
            readable()
        elapsed += time.thread_time() - start
        _drain(browser)
    assert isinstance(plain.on_rtp, Forwarder)
    if plain.on_rtp.stats.packets != packets:
        raise SystemExit(f"only {plain.on_rtp.stats.packets} of {packets} packets relayed")
    print(f"{PROFILE:24} ICE-TCP phone -> browser (recv, forward, SRTP protect, framed "
          f"write): {elapsed / packets * 1e6:.2f} µs/packet "
          f"({stream.dropped_frames} frames dropped on a full send buffer)")
    relay_side.close()
    browser.close()
    plain.close()
    await leg.close()
    await listener.close()
    phone.close()


async def measure_udp_c_path(packets: int) -> None:
    """browser -> phone over UDP as a compiled gateway relays it: the socket's RelayPump
    (webrtc/_relaypath.c) configured by RelayPumps, which the TCP path has no counterpart of."""
    profile = SRTP_AES128_CM_SHA1_80
    key = os.urandom(profile.key_length + profile.salt_length)
    browser, phone = _peer(), _peer()
    pool = PortPool("127.0.0.1", 42800, 43200)
    plain = PlainLeg(pool)
    await plain.open()
    phone_host, phone_port = phone.getsockname()
    plain.set_remote(phone_host, phone_port, None, False)
    leg = WebRtcLeg(pool=pool, public_host="127.0.0.1", certificate=DtlsCertificate(),
                    stun_server=None)
    leg._srtp = SrtpSessions(
        outbound=_session(key, profile.libsrtp_profile, Policy.SSRC_ANY_OUTBOUND),
        inbound=_session(key, profile.libsrtp_profile, Policy.SSRC_ANY_INBOUND),
        profile=PROFILE)
    await leg.prepare(ice_controlling=False)
    leg.on_rtp = forwarder = Forwarder(routes={0: Route(0, plain.send_rtp, target=plain)})
    pumps = RelayPumps()
    pumps.refresh(leg, [plain])
    relay_socket = leg.media_sockets()[0]
    pump = relay_socket.pump
    assert pump is not None
    sender = _session(key, profile.libsrtp_profile, Policy.SSRC_ANY_OUTBOUND)
    inbound = [sender.protect(struct.pack("!BBHII", 0x80, 0, i & 0xFFFF, (i * 160) & 0xFFFFFFFF,
                                          1) + bytes(160)) for i in range(packets)]
    relay_address = relay_socket.get_extra_info("sockname")
    elapsed = 0.0
    for offset in range(0, packets, 100):
        chunk = inbound[offset:offset + 100]
        for data in chunk:
            browser.sendto(data, relay_address)
        start = time.thread_time()
        for _ in chunk:
            pump()  # what the event loop (or the relay's poller) calls when the socket is ready
        elapsed += time.thread_time() - start
        _drain(phone)
    pumps.stop()
    if forwarder.stats.packets != packets:
        raise SystemExit(f"only {forwarder.stats.packets} of {packets} packets relayed in C")
    print(f"{PROFILE:24} browser -> phone, C relay path (recvfrom, SRTP unprotect, forward, "
          f"sendto): {elapsed / packets * 1e6:.2f} µs/packet")
    plain.close()
    await leg.close()
    browser.close()
    phone.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=100_000)
    args = parser.parse_args()
    packets = max(1000, min(args.packets, MAX_PACKETS))
    uvloop.run(measure_udp(packets, PROFILE))  # the gateway runs on uvloop
    if _RELAY_PUMP is not None:  # a compiled install
        uvloop.run(measure_udp_c_path(packets))
    uvloop.run(measure_tcp(packets))


if __name__ == "__main__":
    main()
