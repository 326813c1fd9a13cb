"""SDP parsing into a small model, and writing of the gateway's SDP for each leg.

Built on sdp_transform (grammar-based parse/write); this module only maps its dictionaries to
the fields the media plane needs and back.
"""

from __future__ import annotations

import ipaddress
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import sdp_transform

from .codecs import Codec
from .errors import MediaError

WEBRTC_PROTOCOL = "UDP/TLS/RTP/SAVPF"
PLAIN_PROTOCOL = "RTP/AVP"
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_REVERSED_DIRECTION = {
    "sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly",
    "inactive": "inactive",
}


@dataclass(frozen=True)
class Fingerprint:
    algorithm: str
    value: str


@dataclass
class MediaDescription:
    """One m= section of a received SDP, with session-level defaults already applied."""

    kind: str
    port: int
    protocol: str
    payloads: str
    address: str | None
    codecs: list[Codec]
    direction: str = "sendrecv"
    mid: str | None = None
    rtcp_port: int | None = None
    rtcp_mux: bool = False
    ice_ufrag: str | None = None
    ice_pwd: str | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    fingerprints: list[Fingerprint] = field(default_factory=list)
    setup: str | None = None
    ssrcs: list[dict[str, Any]] = field(default_factory=list)
    ptime: int | None = None

    @property
    def rejected(self) -> bool:
        return self.port == 0

    @property
    def is_webrtc(self) -> bool:
        return "SAVPF" in self.protocol or "DTLS" in self.protocol.upper()

    @property
    def sends(self) -> bool:
        return self.direction in ("sendrecv", "sendonly")

    @property
    def receives(self) -> bool:
        return self.direction in ("sendrecv", "recvonly")


@dataclass
class SessionDescription:
    media: list[MediaDescription]
    bundle_mids: list[str]

    def first(self, kind: str) -> MediaDescription | None:
        return next((m for m in self.media if m.kind == kind and not m.rejected), None)


def reverse_direction(direction: str) -> str:
    """What the answerer says back: an offered sendonly is answered recvonly."""
    return _REVERSED_DIRECTION[direction]


def parse(text: str) -> SessionDescription:
    try:
        session = sdp_transform.parse(text)
    except Exception as exc:  # the grammar raises assorted errors on garbage
        raise MediaError(reason=f"unparseable SDP: {exc}") from exc
    if not session.get("media"):
        raise MediaError(reason="SDP has no m= line")
    session_address = _optional_text((session.get("connection") or {}).get("ip"))
    bundle_mids: list[str] = []
    for group in session.get("groups", []):
        if group.get("type") == "BUNDLE":
            bundle_mids = str(group.get("mids", "")).split()
    credentials = _ice_credentials(text)
    session_credentials = credentials[0]
    media = []
    for index, raw in enumerate(session["media"]):
        if "type" not in raw or "port" not in raw:
            raise MediaError(reason=f"malformed SDP: m= line {index + 1} is not "
                                    "'m=<media> <port> <proto> <fmt>...'")
        try:
            media.append(_parse_media(
                raw, session, session_address,
                {**session_credentials, **(credentials[index + 1]
                                           if index + 1 < len(credentials) else {})}))
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            # The grammar leaves out fields it could not match (m=audio -1, a=rtpmap:0 PCMU
            # without a clock rate): a field missing or not a number is a malformed SDP.
            raise MediaError(reason=f"malformed SDP in m= section {index + 1}: "
                                    f"{type(exc).__name__} {str(exc)[:60]}") from exc
    return SessionDescription(media=media, bundle_mids=bundle_mids)


def _checked_candidate(entry: dict[str, Any]) -> dict[str, Any] | None:
    """An a=candidate with its numbers as ints, or None for one that cannot be used (a
    component, priority or port that is not a number in range, no address): skipped like an
    unresolvable one, the call goes on with the others and peer-reflexive learning."""
    try:
        numbers = {
            "component": _number(entry.get("component"), "candidate component", 1, 256),
            "priority": _number(entry.get("priority"), "candidate priority", 0, 2**32 - 1),
            "port": _number(entry.get("port"), "candidate port", 0, 65535),
        }
    except MediaError:
        return None
    if not entry.get("ip") or entry.get("foundation") is None or not entry.get("type"):
        return None
    checked = {**entry, **numbers, "ip": str(entry["ip"]), "type": str(entry["type"])}
    if entry.get("rport") is not None:
        if not str(entry["rport"]).isdigit() or int(entry["rport"]) > 65535:
            return None
        checked["rport"] = int(entry["rport"])
    return checked


def _optional_text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _number(value: Any, what: str, low: int, high: int) -> int:
    """An SDP number within [low, high]; a MediaError (488) naming the field otherwise."""
    text = "" if value is None else str(value)
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
        shown = repr(text[:20]) if text else "missing"
        raise MediaError(reason=f"malformed SDP: {what} {shown}, expected a number {low}-{high}")
    return int(text)


def _ice_credentials(text: str) -> list[dict[str, str]]:
    """ice-ufrag and ice-pwd exactly as written, session level first, then per m= section.

    sdp_transform turns all-digit values into integers: an ICE ufrag such as "0123" (random
    ufrags are all digits about once in 1,500) would come back as 123 and fail every
    connectivity check's USERNAME, and "0000" would vanish.
    """
    sections: list[dict[str, str]] = [{}]
    for line in text.splitlines():
        if line.startswith("m="):
            sections.append({})
        elif line.startswith(("a=ice-ufrag:", "a=ice-pwd:")):
            name, _, value = line[2:].partition(":")
            sections[-1][name] = value.strip()
    return sections


def _parse_media(
    raw: dict[str, Any], session: dict[str, Any], session_address: str | None,
    credentials: dict[str, str],
) -> MediaDescription:
    # The grammar turns any all-digit value into an int ("a=rtpmap:111 123/48000", "a=setup:1"):
    # every text field is read through str().
    fmtp = {entry["payload"]: str(entry["config"]) for entry in raw.get("fmtp", [])}
    feedback: dict[int, list[str]] = {}
    for entry in raw.get("rtcpFb", []):
        if entry["payload"] == "*":
            continue
        value = str(entry["type"]) + (f" {entry['subtype']}" if entry.get("subtype") else "")
        feedback.setdefault(_number(entry["payload"], "a=rtcp-fb payload", 0, 127),
                            []).append(value)
    rtpmap = {entry["payload"]: entry for entry in raw.get("rtp", [])}
    codecs = []
    for token in str(raw.get("payloads", "")).split():
        if not token.isdigit():
            continue
        payload_type = _number(token, "payload type", 0, 127)
        mapping = rtpmap.get(payload_type) or _STATIC_PAYLOADS.get(payload_type)
        if mapping is None:
            continue
        codecs.append(Codec(
            payload_type=payload_type,
            name=str(mapping["codec"]),
            clock_rate=_number(mapping.get("rate"), f"clock rate of payload {token}", 1,
                               1_000_000),
            channels=_number(mapping.get("encoding") or 1, f"channels of payload {token}", 1, 8),
            fmtp=fmtp.get(payload_type),
            rtcp_feedback=tuple(feedback.get(payload_type, [])),
        ))
    fingerprint = raw.get("fingerprint") or session.get("fingerprint")
    fingerprints = (
        [Fingerprint(str(fingerprint["type"]).lower(), str(fingerprint["hash"]).upper())]
        if fingerprint else []
    )
    rtcp = raw.get("rtcp") or {}
    return MediaDescription(
        kind=str(raw["type"]),
        port=_number(raw["port"], "m= port", 0, 65535),
        protocol=str(raw["protocol"]),
        payloads=str(raw.get("payloads", "")),
        address=_optional_text((raw.get("connection") or {}).get("ip")) or session_address,
        codecs=codecs,
        direction=str(raw.get("direction") or session.get("direction") or "sendrecv"),
        mid=str(raw["mid"]) if raw.get("mid") is not None else None,
        rtcp_port=_number(rtcp["port"], "a=rtcp port", 1, 65535) if rtcp.get("port") else None,
        rtcp_mux=bool(raw.get("rtcpMux")),
        ice_ufrag=credentials.get("ice-ufrag") or None,
        ice_pwd=credentials.get("ice-pwd") or None,
        candidates=[c for c in map(_checked_candidate, raw.get("candidates", [])) if c],
        fingerprints=fingerprints,
        setup=_optional_text(raw.get("setup") or session.get("setup")),
        ssrcs=list(raw.get("ssrcs", [])),
        ptime=_number(raw["ptime"], "a=ptime", 1, 1000) if raw.get("ptime") else None,
    )


_STATIC_PAYLOADS: dict[int, dict[str, Any]] = {
    0: {"codec": "PCMU", "rate": 8000},
    8: {"codec": "PCMA", "rate": 8000},
    9: {"codec": "G722", "rate": 8000},
    13: {"codec": "CN", "rate": 8000},
}


class SdpOrigin:
    """The gateway's o= line towards one peer: fixed session id, version bumped per SDP."""

    _ids = itertools.count(int(time.time()) * 1000)

    def __init__(self, address: str) -> None:
        self.session_id = next(self._ids)
        self.version = 0
        self.address = address

    def next_line(self) -> dict[str, Any]:
        self.version += 1
        return {
            "username": "-", "sessionId": self.session_id, "sessionVersion": self.version,
            "netType": "IN", "ipVer": ip_version(self.address), "address": self.address,
        }


def ip_version(address: str) -> int:
    try:
        return ipaddress.ip_address(address).version
    except ValueError:
        return 4


@dataclass
class WebRtcTransportParams:
    """What the gateway says about its own ICE/DTLS endpoint on the WebRTC leg."""

    ice_ufrag: str
    ice_pwd: str
    candidates: list[dict[str, Any]]
    fingerprint: Fingerprint
    setup: str


@dataclass
class MediaSection:
    """One m= section the gateway writes; port 0 rejects it."""

    kind: str
    port: int
    codecs: list[Codec]
    direction: str = "sendrecv"
    mid: str | None = None
    rejected_protocol: str | None = None
    rejected_payloads: str | None = None
    rtcp_mux: bool = False
    ptime: int | None = None
    msid: str | None = None


def write_webrtc(
    origin: SdpOrigin, address: str, sections: list[MediaSection],
    transport: WebRtcTransportParams,
) -> str:
    media = []
    bundled: list[str] = []
    for section in sections:
        if section.port == 0:
            media.append(_rejected(section, address))
            continue
        entry = _codec_lines(section)
        entry.update({
            "type": section.kind, "port": section.port, "protocol": WEBRTC_PROTOCOL,
            "connection": {"version": ip_version(address), "ip": address},
            "rtcp": {"port": section.port, "netType": "IN", "ipVer": ip_version(address),
                     "address": address},
            "iceUfrag": transport.ice_ufrag, "icePwd": transport.ice_pwd,
            "fingerprint": {"type": transport.fingerprint.algorithm,
                            "hash": transport.fingerprint.value},
            "setup": transport.setup, "mid": section.mid, "direction": section.direction,
            "rtcpMux": "rtcp-mux", "candidates": transport.candidates,
            "endOfCandidates": "end-of-candidates",
        })
        if section.msid:
            entry["msid"] = section.msid
        bundled.append(str(section.mid))
        media.append(entry)
    session: dict[str, Any] = {
        "version": 0, "origin": origin.next_line(), "name": "-",
        "timing": {"start": 0, "stop": 0}, "media": media,
        "msidSemantic": {"semantic": "WMS", "token": "*"},
    }
    if bundled:
        session["groups"] = [{"type": "BUNDLE", "mids": " ".join(bundled)}]
    return _with_tcptype(sdp_transform.write(session))


def _with_tcptype(sdp: str) -> str:
    """sdp_transform 1.1.0 writes a candidate's RFC 6544 `tcptype` as "tcpfield" (a typo in its
    grammar), which browsers do not understand: a passive candidate would read as active."""
    if " tcpfield " not in sdp:
        return sdp
    return "\r\n".join(
        line.replace(" tcpfield ", " tcptype ") if line.startswith("a=candidate:") else line
        for line in sdp.split("\r\n")
    )


def write_plain(
    origin: SdpOrigin, address: str, sections: list[MediaSection]
) -> str:
    media = []
    for section in sections:
        if section.port == 0:
            media.append(_rejected(section, address))
            continue
        entry = _codec_lines(section)
        entry.update({
            "type": section.kind, "port": section.port, "protocol": PLAIN_PROTOCOL,
            "direction": section.direction,
        })
        if section.rtcp_mux:
            entry["rtcpMux"] = "rtcp-mux"
        if section.ptime:
            entry["ptime"] = section.ptime
        media.append(entry)
    session = {
        "version": 0, "origin": origin.next_line(), "name": "ws2sip",
        "connection": {"version": ip_version(address), "ip": address},
        "timing": {"start": 0, "stop": 0}, "media": media,
    }
    return sdp_transform.write(session)


def _codec_lines(section: MediaSection) -> dict[str, Any]:
    rtp = []
    fmtp = []
    feedback = []
    for codec in section.codecs:
        line: dict[str, Any] = {
            "payload": codec.payload_type, "codec": codec.name, "rate": codec.clock_rate,
        }
        if codec.channels > 1:
            line["encoding"] = codec.channels
        rtp.append(line)
        if codec.fmtp:
            fmtp.append({"payload": codec.payload_type, "config": codec.fmtp})
        for value in codec.rtcp_feedback:
            kind, _, subtype = value.partition(" ")
            entry = {"payload": codec.payload_type, "type": kind}
            if subtype:
                entry["subtype"] = subtype
            feedback.append(entry)
    lines: dict[str, Any] = {
        "payloads": " ".join(str(codec.payload_type) for codec in section.codecs),
        "rtp": rtp, "fmtp": fmtp,
    }
    if feedback:
        lines["rtcpFb"] = feedback
    return lines


def _rejected(section: MediaSection, address: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "type": section.kind, "port": 0,
        "protocol": section.rejected_protocol or PLAIN_PROTOCOL,
        "payloads": section.rejected_payloads or "0",
        "connection": {"version": ip_version(address), "ip": address},
        "direction": "inactive",
    }
    if section.mid is not None:
        entry["mid"] = section.mid
    return entry
