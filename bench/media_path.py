"""CPU of the relay's own per-packet code, without the event loop around it.

Drives the real classes synchronously from the sockets' protocol objects on: the ICE socket's
datagram_received (SRTP unprotect with a real libsrtp session) -> Forwarder -> PlainLeg -> UDP
sendto, and the RTP socket's datagram_received -> Forwarder -> SRTP protect -> the nominated
ICE pair's sendto. Compare with bench/media_load.py, whose figure adds
the event loop's wakeups, recvfrom and the load of real calls.

    python bench/media_path.py --packets 200000
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import struct
import sys
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


def _session(key: bytes, profile: int, direction: int) -> Session:
    return Session(Policy(key=key, ssrc_type=direction, srtp_profile=profile))


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(packets: int, profile_name: str) -> None:
    profile = {"AES_CM_128_HMAC_SHA1_80": SRTP_AES128_CM_SHA1_80,
               "AEAD_AES_128_GCM": SRTP_AEAD_AES_128_GCM}[profile_name]
    key = os.urandom(profile.key_length + profile.salt_length)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    sink_address = sink.getsockname()

    pool = PortPool("127.0.0.1", 42000, 42400)
    plain = PlainLeg(pool)
    await plain.open()
    plain.set_remote(*sink_address, None, False)
    leg = WebRtcLeg(pool=pool, public_host="127.0.0.1", certificate=DtlsCertificate(),
                    stun_server=None)
    leg._srtp = SrtpSessions(  # keys as a finished DTLS handshake would install them
        outbound=_session(key, profile.libsrtp_profile, Policy.SSRC_ANY_OUTBOUND),
        inbound=_session(key, profile.libsrtp_profile, Policy.SSRC_ANY_INBOUND),
        profile=profile_name)
    await leg.prepare(ice_controlling=False)
    ice = leg._ice
    assert ice is not None
    ice_socket = ice._protocols[0]
    # The pair ICE would nominate with a peer at the sink's address.
    ice._nominated[COMPONENT] = CandidatePair(ice_socket, Candidate(
        foundation="1", component=COMPONENT, transport="udp", priority=1,
        host=sink_address[0], port=sink_address[1], type="host"))
    leg.on_rtp = Forwarder(routes={0: Route(0, plain.send_rtp)})
    plain.on_rtp = Forwarder(routes={0: Route(0, leg.send_rtp)})

    browser = _session(key, profile.libsrtp_profile, Policy.SSRC_ANY_OUTBOUND)
    payload = bytes(160)
    # Distinct sequence numbers: libsrtp's replay protection rejects repeats.
    inbound_srtp = [browser.protect(struct.pack("!BBHII", 0x80, 0, i & 0xFFFF,
                                                (i * 160) & 0xFFFFFFFF, 1) + payload)
                    for i in range(packets)]
    inbound_plain = [struct.pack("!BBHII", 0x80, 0, i & 0xFFFF, (i * 160) & 0xFFFFFFFF, 2)
                     + payload for i in range(packets)]

    def drain() -> None:
        try:
            while True:
                sink.recv(2048)
        except BlockingIOError:
            pass

    assert plain._rtp is not None
    rtp_socket = plain._rtp.get_protocol()
    for label, handler, batch, forwarder in (
        ("browser -> phone (SRTP unprotect, forward, sendto)", ice_socket.datagram_received,
         inbound_srtp, leg.on_rtp),
        ("phone -> browser (forward, SRTP protect, sendto)", rtp_socket.datagram_received,
         inbound_plain, plain.on_rtp),
    ):
        start = _cpu()
        for offset in range(0, packets, 1000):
            for data in batch[offset:offset + 1000]:
                handler(data, sink_address)
            drain()  # keep the receive buffer from filling; a tiny share of the time
        elapsed = _cpu() - start
        assert isinstance(forwarder, Forwarder)
        if forwarder.stats.packets != packets:
            raise SystemExit(f"only {forwarder.stats.packets} of {packets} packets relayed")
        print(f"{profile_name:24} {label}: {elapsed / packets * 1e6:.2f} µs/packet")
    plain.close()
    await leg.close()
    sink.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=200_000)
    args = parser.parse_args()
    packets = max(1000, min(args.packets, MAX_PACKETS))
    for profile in ("AES_CM_128_HMAC_SHA1_80", "AEAD_AES_128_GCM"):
        uvloop.run(measure(packets, profile))  # the gateway runs on uvloop


if __name__ == "__main__":
    main()
