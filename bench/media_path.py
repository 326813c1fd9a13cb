"""CPU of the relay's own per-packet code, without the event loop around it.

Drives the real classes synchronously from the sockets' readiness callbacks on: the ICE
socket's read (recvfrom, SRTP unprotect with a real libsrtp session) -> Forwarder -> PlainLeg
-> UDP sendto, and the RTP socket's read (recv) -> Forwarder -> SRTP protect -> the nominated
ICE pair's sendto. A "browser" and a "phone" socket in this process feed the relay's sockets
and take what it sends; only the relay's side is timed (thread CPU time around its reads).
Compare with bench/media_load.py, whose figure adds the event loop's wakeups and the load of
real calls.

    python bench/media_path.py --packets 200000
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aioice.candidate import Candidate  # noqa: E402
from aioice.ice import CandidatePair  # noqa: E402
from aiortc.rtcdtlstransport import SRTP_AEAD_AES_128_GCM, SRTP_AES128_CM_SHA1_80  # noqa: E402
from pylibsrtp import Policy, Session  # noqa: E402

from webrtc.dtls import DtlsCertificate  # noqa: E402
from webrtc.forwarding import Forwarder, Route  # noqa: E402
from webrtc.ice import COMPONENT  # noqa: E402
from webrtc.plain import PlainLeg  # noqa: E402
from webrtc.ports import PortPool  # noqa: E402
from webrtc.srtp import SrtpSessions  # noqa: E402
from webrtc.webrtc_leg import WebRtcLeg  # noqa: E402

MAX_PACKETS = 500_000
BATCH = 100  # datagrams queued on a relay socket at a time: well inside its receive buffer


def _session(key: bytes, profile: int, direction: int) -> Session:
    return Session(Policy(key=key, ssrc_type=direction, srtp_profile=profile))


def _peer() -> socket.socket:
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.setblocking(False)
    return peer


def _drain(peer: socket.socket) -> None:
    try:
        while True:
            peer.recv(2048)
    except BlockingIOError:
        pass


async def measure(packets: int, profile_name: str) -> None:
    profile = {"AES_CM_128_HMAC_SHA1_80": SRTP_AES128_CM_SHA1_80,
               "AEAD_AES_128_GCM": SRTP_AEAD_AES_128_GCM}[profile_name]
    key = os.urandom(profile.key_length + profile.salt_length)
    browser, phone = _peer(), _peer()
    pool = PortPool("127.0.0.1", 42000, 42400)
    plain = PlainLeg(pool)
    await plain.open()
    plain.set_remote(*phone.getsockname(), None, False)
    leg = WebRtcLeg(pool=pool, public_host="127.0.0.1", certificate=DtlsCertificate(),
                    stun_server=None)
    leg._srtp = SrtpSessions(  # keys as a finished DTLS handshake would install them
        outbound=_session(key, profile.libsrtp_profile, Policy.SSRC_ANY_OUTBOUND),
        inbound=_session(key, profile.libsrtp_profile, Policy.SSRC_ANY_INBOUND),
        profile=profile_name)
    await leg.prepare(ice_controlling=False)
    ice = leg._ice
    assert ice is not None and plain._rtp is not None
    ice_socket = ice._protocols[0]
    # The pair ICE would nominate with the browser socket as its peer.
    browser_address = browser.getsockname()
    ice._nominated[COMPONENT] = CandidatePair(ice_socket, Candidate(
        foundation="1", component=COMPONENT, transport="udp", priority=1,
        host=browser_address[0], port=browser_address[1], type="host"))
    leg.on_rtp = Forwarder(routes={0: Route(0, plain.send_rtp)})
    plain.on_rtp = Forwarder(routes={0: Route(0, leg.send_rtp)})

    sender = _session(key, profile.libsrtp_profile, Policy.SSRC_ANY_OUTBOUND)
    payload = bytes(160)
    # Distinct sequence numbers: libsrtp's replay protection rejects repeats.
    inbound_srtp = [sender.protect(struct.pack("!BBHII", 0x80, 0, i & 0xFFFF,
                                               (i * 160) & 0xFFFFFFFF, 1) + payload)
                    for i in range(packets)]
    inbound_plain = [struct.pack("!BBHII", 0x80, 0, i & 0xFFFF, (i * 160) & 0xFFFFFFFF, 2)
                     + payload for i in range(packets)]

    relay_ice = ice_socket.transport
    for label, source, relay_socket, batch, forwarder in (
        ("browser -> phone (recvfrom, SRTP unprotect, forward, sendto)", browser, relay_ice,
         inbound_srtp, leg.on_rtp),
        ("phone -> browser (recv, forward, SRTP protect, sendto)", phone, plain._rtp,
         inbound_plain, plain.on_rtp),
    ):
        relay_address = relay_socket.get_extra_info("sockname")
        readable = relay_socket._readable  # what the event loop calls when the socket is ready
        elapsed = 0.0
        for offset in range(0, packets, BATCH):
            chunk = batch[offset:offset + BATCH]
            for data in chunk:
                source.sendto(data, relay_address)
            start = time.thread_time()
            for _ in chunk:
                readable()
            elapsed += time.thread_time() - start
            _drain(browser)
            _drain(phone)
        assert isinstance(forwarder, Forwarder)
        if forwarder.stats.packets != packets:
            raise SystemExit(f"only {forwarder.stats.packets} of {packets} packets relayed")
        print(f"{profile_name:24} {label}: {elapsed / packets * 1e6:.2f} µs/packet")
    plain.close()
    await leg.close()
    browser.close()
    phone.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=200_000)
    args = parser.parse_args()
    packets = max(1000, min(args.packets, MAX_PACKETS))
    for profile in ("AES_CM_128_HMAC_SHA1_80", "AEAD_AES_128_GCM"):
        uvloop.run(measure(packets, profile))  # the gateway runs on uvloop


if __name__ == "__main__":
    main()
