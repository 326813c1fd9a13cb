"""Messages parsed / serialised per second on one core for typical browser traffic.

Run: `python bench/parse_bench.py [seconds-per-case]`. Each loop is bounded both in time
(default 2 s) and in iterations, and prints one line of figures per case.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sip.message import parse_message  # noqa: E402

MAX_ITERATIONS = 5_000_000
ROUNDS = 5

JSSIP_REGISTER = (
    b"REGISTER sip:example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/WSS 4ktl3j9pq1hv.invalid;branch=z9hG4bK1837462\r\n"
    b"Max-Forwards: 69\r\n"
    b"To: <sip:alice@example.com>\r\n"
    b"From: \"Alice\" <sip:alice@example.com>;tag=9kj2bd8s3l\r\n"
    b"Call-ID: 8g1sfm7rk4bnl0v5lq2tkc\r\n"
    b"CSeq: 1 REGISTER\r\n"
    b"Contact: <sip:r8s1d3ae@4ktl3j9pq1hv.invalid;transport=ws>;+sip.ice;reg-id=1;"
    b"+sip.instance=\"<urn:uuid:2f1c4b6e-6d8a-4c0e-9a52-3d5b7f1e8c21>\";expires=600\r\n"
    b"Expires: 600\r\n"
    b"Allow: INVITE,ACK,CANCEL,BYE,UPDATE,MESSAGE,OPTIONS,REFER,INFO,NOTIFY\r\n"
    b"Supported: path,gruu,outbound\r\n"
    b"User-Agent: JsSIP 3.10.1\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

BROWSER_SDP = (
    b"v=0\r\n"
    b"o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n"
    b"s=-\r\n"
    b"t=0 0\r\n"
    b"a=group:BUNDLE 0\r\n"
    b"a=extmap-allow-mixed\r\n"
    b"a=msid-semantic: WMS 7d3c1e2f-5b6a-4c8d-9e0f-1a2b3c4d5e6f\r\n"
    b"m=audio 54402 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\n"
    b"c=IN IP4 192.0.2.10\r\n"
    b"a=rtcp:9 IN IP4 0.0.0.0\r\n"
    b"a=candidate:2999745851 1 udp 2122260223 192.0.2.10 54402 typ host generation 0\r\n"
    b"a=candidate:1387637174 1 udp 1686052607 198.51.100.7 54402 typ srflx raddr 192.0.2.10"
    b" rport 54402 generation 0\r\n"
    b"a=ice-ufrag:Qb7x\r\n"
    b"a=ice-pwd:V0Zl3Y2p8kH9fJq1mN4rT6wX\r\n"
    b"a=ice-options:trickle\r\n"
    b"a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:"
    b"C2:43:F0:A1:58:D0:A1:2C:19:08\r\n"
    b"a=setup:actpass\r\n"
    b"a=mid:0\r\n"
    b"a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n"
    b"a=sendrecv\r\n"
    b"a=msid:7d3c1e2f-5b6a-4c8d-9e0f-1a2b3c4d5e6f 0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0\r\n"
    b"a=rtcp-mux\r\n"
    b"a=rtpmap:111 opus/48000/2\r\n"
    b"a=rtcp-fb:111 transport-cc\r\n"
    b"a=fmtp:111 minptime=10;useinbandfec=1\r\n"
    b"a=rtpmap:63 red/48000/2\r\n"
    b"a=fmtp:63 111/111\r\n"
    b"a=rtpmap:9 G722/8000\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:13 CN/8000\r\n"
    b"a=rtpmap:110 telephone-event/48000\r\n"
    b"a=rtpmap:126 telephone-event/8000\r\n"
    b"a=ssrc:3735928559 cname:f3Kq9vLw2ZpR8xYt\r\n"
)

BROWSER_INVITE = (
    "INVITE sip:bob@example.com SIP/2.0\r\n"
    "Via: SIP/2.0/WSS 4ktl3j9pq1hv.invalid;branch=z9hG4bK6290411\r\n"
    "Max-Forwards: 69\r\n"
    "To: <sip:bob@example.com>\r\n"
    "From: \"Alice\" <sip:alice@example.com>;tag=q8ajv1fh5t\r\n"
    "Call-ID: 2m6bm0ftgk9l7pau1qv3\r\n"
    "CSeq: 7561 INVITE\r\n"
    "Contact: <sip:r8s1d3ae@4ktl3j9pq1hv.invalid;transport=ws;ob>\r\n"
    "Content-Type: application/sdp\r\n"
    "Session-Expires: 90\r\n"
    "Allow: INVITE,ACK,CANCEL,BYE,UPDATE,MESSAGE,OPTIONS,REFER,INFO,NOTIFY\r\n"
    "Supported: timer,ice,replaces,outbound\r\n"
    "User-Agent: JsSIP 3.10.1\r\n"
    f"Content-Length: {len(BROWSER_SDP)}\r\n"
    "\r\n"
).encode() + BROWSER_SDP

OK_RESPONSE = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/WSS 4ktl3j9pq1hv.invalid;branch=z9hG4bK1837462;received=192.0.2.10\r\n"
    b"To: <sip:alice@example.com>;tag=a73kszlfl\r\n"
    b"From: \"Alice\" <sip:alice@example.com>;tag=9kj2bd8s3l\r\n"
    b"Call-ID: 8g1sfm7rk4bnl0v5lq2tkc\r\n"
    b"CSeq: 1 REGISTER\r\n"
    b"Contact: <sip:r8s1d3ae@4ktl3j9pq1hv.invalid;transport=ws>;expires=600\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

CASES = {
    "REGISTER (JsSIP)": JSSIP_REGISTER,
    "INVITE + browser SDP": BROWSER_INVITE,
    "200 OK": OK_RESPONSE,
}


def rate(operation: Callable[[], object], seconds: float) -> float:
    """Best operations per second over ROUNDS rounds sharing `seconds` (and MAX_ITERATIONS).

    The best round, as timeit advises, because other processes on the machine only ever slow
    a round down.
    """
    batch = 1_000
    best = 0.0
    for _ in range(ROUNDS):
        done = 0
        started = time.perf_counter()
        deadline = started + seconds / ROUNDS
        while done < MAX_ITERATIONS // ROUNDS:
            for _ in range(batch):
                operation()
            done += batch
            if time.perf_counter() >= deadline:
                break
        best = max(best, done / (time.perf_counter() - started))
    return best


def parse_and_validate(data: bytes) -> None:
    message = parse_message(data)
    message.validate()


def parse_validate_and_route(data: bytes) -> None:
    """What a proxy touches per message: validation plus the top Via branch and both tags."""
    message = parse_message(data)
    message.validate()
    _ = (message.top_via.branch, message.from_.tag, message.to.tag, message.contacts)


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    print(f"{'case':24} {'parse/s':>10} {'+validate/s':>12} {'+accessors/s':>13} "
          f"{'serialise/s':>12}")
    for name, data in CASES.items():
        parsed = parse_message(data)
        parse_rate = rate(lambda data=data: parse_message(data), seconds)
        validate_rate = rate(lambda data=data: parse_and_validate(data), seconds)
        access_rate = rate(lambda data=data: parse_validate_and_route(data), seconds)
        serialise_rate = rate(parsed.to_bytes, seconds)
        print(f"{name:24} {parse_rate:10,.0f} {validate_rate:12,.0f} {access_rate:13,.0f} "
              f"{serialise_rate:12,.0f}")


if __name__ == "__main__":
    main()
