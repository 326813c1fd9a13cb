"""Realistic SDP bodies as Chrome (Unified Plan, BUNDLE) and Asterisk chan_pjsip emit them."""

CRLF = "\r\n"


def _join(lines: list[str]) -> str:
    return CRLF.join(lines) + CRLF


CHROME_AUDIO_OFFER = _join([
    "v=0",
    "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0",
    "a=extmap-allow-mixed",
    "a=msid-semantic: WMS 5d1f8a9e-4c0b-4bd3-9d3e-7b6a1e0f2c11",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
    "c=IN IP4 0.0.0.0",
    "a=rtcp:9 IN IP4 0.0.0.0",
    "a=candidate:3018466219 1 udp 2113937151 2f7a1c6e-3b9d-4e0a-8c55-0d1e2f3a4b5c.local 54321 "
    "typ host generation 0 network-cost 999",
    "a=ice-ufrag:Hq3F",
    "a=ice-pwd:YbW8l1n0g3aM4t9xPq2rK7cZ",
    "a=ice-options:trickle",
    "a=fingerprint:sha-256 4D:1B:7A:0C:9E:22:55:13:6F:88:A1:3B:C2:D4:E6:F7:08:19:2A:3B:4C:5D:"
    "6E:7F:80:91:A2:B3:C4:D5:E6:F7",
    "a=setup:actpass",
    "a=mid:0",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=sendrecv",
    "a=msid:5d1f8a9e-4c0b-4bd3-9d3e-7b6a1e0f2c11 0b7c3d2e-1f4a-4c5b-8d6e-9f0a1b2c3d4e",
    "a=rtcp-mux",
    "a=rtcp-rsize",
    "a=rtpmap:111 opus/48000/2",
    "a=rtcp-fb:111 transport-cc",
    "a=fmtp:111 minptime=10;useinbandfec=1",
    "a=rtpmap:63 red/48000/2",
    "a=fmtp:63 111/111",
    "a=rtpmap:9 G722/8000",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:13 CN/8000",
    "a=rtpmap:110 telephone-event/48000",
    "a=rtpmap:126 telephone-event/8000",
    "a=ssrc:1001234567 cname:kX3n9QzP2mW8vT1c",
    "a=ssrc:1001234567 msid:5d1f8a9e-4c0b-4bd3-9d3e-7b6a1e0f2c11 "
    "0b7c3d2e-1f4a-4c5b-8d6e-9f0a1b2c3d4e",
])

CHROME_OPUS_ONLY_OFFER = CHROME_AUDIO_OFFER.replace(
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 13 110",
).replace("a=rtpmap:9 G722/8000\r\n", "").replace("a=rtpmap:0 PCMU/8000\r\n", "").replace(
    "a=rtpmap:8 PCMA/8000\r\n", "").replace("a=rtpmap:126 telephone-event/8000\r\n", "")

CHROME_OFFER_WITHOUT_FINGERPRINT = "".join(
    line + CRLF for line in CHROME_AUDIO_OFFER.split(CRLF) if line and "fingerprint" not in line
)

CHROME_VIDEO_ONLY_OFFER = _join([
    "v=0",
    "o=- 1 2 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
    "c=IN IP4 0.0.0.0",
    "a=ice-ufrag:Hq3F",
    "a=ice-pwd:YbW8l1n0g3aM4t9xPq2rK7cZ",
    "a=fingerprint:sha-256 4D:1B:7A:0C:9E:22:55:13:6F:88:A1:3B:C2:D4:E6:F7:08:19:2A:3B:4C:5D:"
    "6E:7F:80:91:A2:B3:C4:D5:E6:F7",
    "a=setup:actpass",
    "a=mid:0",
    "a=sendrecv",
    "a=rtcp-mux",
    "a=rtpmap:96 VP8/90000",
    "a=rtpmap:97 rtx/90000",
    "a=fmtp:97 apt=96",
])


def asterisk_sdp(port: int, payloads: str = "0 8 101", direction: str = "sendrecv",
                 host: str = "127.0.0.1", session_version: int = 1,
                 rtcp_port: int | None = None) -> str:
    """An SDP body as Asterisk's chan_pjsip emits it (offer or answer)."""
    family = "IP6" if ":" in host else "IP4"
    rtpmaps = {
        "0": "a=rtpmap:0 PCMU/8000",
        "8": "a=rtpmap:8 PCMA/8000",
        "9": "a=rtpmap:9 G722/8000",
        "111": "a=rtpmap:111 opus/48000/2",
        "101": "a=rtpmap:101 telephone-event/8000",
    }
    lines = [
        "v=0",
        f"o=- 1719234 {session_version} IN {family} {host}",
        "s=Asterisk",
        f"c=IN {family} {host}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {payloads}",
    ]
    for pt in payloads.split():
        lines.append(rtpmaps[pt])
        if pt == "101":
            lines.append("a=fmtp:101 0-16")
    if rtcp_port is not None:
        lines.append(f"a=rtcp:{rtcp_port}")
    lines += ["a=ptime:20", "a=maxptime:150", f"a={direction}"]
    return _join(lines)


def chrome_audio_answer(payloads: str = "0 101", direction: str = "sendrecv") -> str:
    """Chrome's answer to a gateway offer: setup:active, mDNS host candidate, ssrc lines."""
    rtpmaps = {
        "0": "a=rtpmap:0 PCMU/8000", "8": "a=rtpmap:8 PCMA/8000", "9": "a=rtpmap:9 G722/8000",
        "111": "a=rtpmap:111 opus/48000/2", "101": "a=rtpmap:101 telephone-event/8000",
    }
    lines = [
        "v=0", "o=- 8046286431541236131 2 IN IP4 127.0.0.1", "s=-", "t=0 0",
        "a=group:BUNDLE 0", "a=msid-semantic: WMS",
        f"m=audio 9 UDP/TLS/RTP/SAVPF {payloads}", "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=candidate:1467250027 1 udp 2122260223 9a1c3f0e-5b7d-4e2a-8c6f-1d2e3f4a5b6c.local "
        "61234 typ host generation 0 network-cost 999",
        "a=ice-ufrag:Zt9q", "a=ice-pwd:Lk2mN8pQ4rS6tU0vW3xY5zA1",
        "a=ice-options:trickle",
        "a=fingerprint:sha-256 0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9:0A:1B:2C:3D:4E:5F:"
        "60:71:82:93:A4:B5:C6:D7:E8:F9",
        "a=setup:active", "a=mid:0", f"a={direction}", "a=rtcp-mux",
    ]
    lines += [rtpmaps[pt] for pt in payloads.split()]
    lines += ["a=ssrc:2233445566 cname:Qw8eR7tY6uI5oP4a"]
    return _join(lines)


CHROME_AUDIO_VIDEO_OFFER = CHROME_AUDIO_OFFER.replace(
    "a=group:BUNDLE 0", "a=group:BUNDLE 0 1"
) + _join([
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102",
    "c=IN IP4 0.0.0.0",
    "a=rtcp:9 IN IP4 0.0.0.0",
    "a=ice-ufrag:Hq3F",
    "a=ice-pwd:YbW8l1n0g3aM4t9xPq2rK7cZ",
    "a=fingerprint:sha-256 4D:1B:7A:0C:9E:22:55:13:6F:88:A1:3B:C2:D4:E6:F7:08:19:2A:3B:4C:5D:"
    "6E:7F:80:91:A2:B3:C4:D5:E6:F7",
    "a=setup:actpass",
    "a=mid:1",
    "a=sendrecv",
    "a=rtcp-mux",
    "a=rtcp-rsize",
    "a=rtpmap:96 VP8/90000",
    "a=rtcp-fb:96 goog-remb",
    "a=rtcp-fb:96 nack",
    "a=rtcp-fb:96 nack pli",
    "a=rtpmap:97 rtx/90000",
    "a=fmtp:97 apt=96",
    "a=rtpmap:102 H264/90000",
    "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
])

CHROME_DATACHANNEL_LINE = _join([
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
    "c=IN IP4 0.0.0.0",
    "a=mid:2",
    "a=sctp-port:5000",
])
