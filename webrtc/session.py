"""One call's media: offer/answer state between a WebRTC leg and a plain RTP leg."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from .codecs import GATEWAY_AUDIO, TRANSCODABLE, Codec, events_for_clock
from .dtls import DtlsCertificate, DtlsRole
from .errors import MediaError
from .forwarding import DirectionStats, Forwarder, Route
from .ice_tcp import IceTcpListener
from .negotiation import Agreement, agree, offer_codecs, relayable, webrtc_feedback
from .plain import LatchPolicy, PlainLeg
from .ports import PortPool
from .relay_pumps import RelayPumps
from .rtcp import without_bye
from .sdp import (
    MediaDescription,
    MediaSection,
    SdpOrigin,
    SessionDescription,
    parse,
    write_plain,
    write_webrtc,
)
from .transcoding import AudioTranscoder
from .webrtc_leg import WebRtcLeg

log = logging.getLogger(f"ws2sip.{__name__}")

Side = Literal["webrtc", "plain"]
Offerer = Literal["webrtc", "plain", "gateway"]  # "gateway": its own late offer
KINDS = ("audio", "video")
_PTIME_MS = 20


def other(side: Side) -> Side:
    return "plain" if side == "webrtc" else "webrtc"


@dataclass
class RelayContext:
    """What every session of one MediaRelay shares."""

    pool: PortPool
    public_host: str
    certificate: Callable[[], DtlsCertificate]
    stun_server: tuple[str, int] | None
    latch: LatchPolicy = field(default_factory=LatchPolicy)
    tcp_listener: IceTcpListener | None = None  # ICE-TCP passive candidates, when configured


@dataclass
class _Pending:
    """An offer the gateway forwarded and whose answer it waits for."""

    offerer: Offerer
    offered: dict[str, list[Codec]]           # kind -> offerer's codecs, offerer's numbering
    directions: dict[str, str]                # kind -> offerer's direction
    lines: list[tuple[MediaDescription, str | None]]  # offerer's m-lines, accepted kind or None
    answer_to_offerer: bool = True            # False in the second half of a late offer
    offered_to: Side | None = None            # where the gateway's own late offer went


@dataclass
class _Stream:
    kind: str
    plain: PlainLeg
    mid: str
    agreement: Agreement | None = None
    webrtc_is_offerer: bool = True
    # Everything each side listed: RFC 3264 lets it send any of those, not only the first.
    may_send: dict[Side, list[Codec]] = field(default_factory=dict)
    transcoders: list[AudioTranscoder] = field(default_factory=list)

    def codec(self, side: Side) -> tuple[Codec, Codec | None]:
        assert self.agreement is not None
        if (side == "webrtc") == self.webrtc_is_offerer:
            return self.agreement.offerer_codec, self.agreement.offerer_events
        return self.agreement.answerer_codec, self.agreement.answerer_events


class MediaSession:
    """Anchors one call's media between a WebRTC leg and a plain RTP leg."""

    def __init__(
        self, context: RelayContext, session_id: str, on_closed: Callable[[str], None]
    ) -> None:
        self.session_id = session_id
        self._context = context
        self._on_closed = on_closed
        self._origins: dict[Side, SdpOrigin] = {
            "webrtc": SdpOrigin(context.public_host), "plain": SdpOrigin(context.public_host),
        }
        self._webrtc: WebRtcLeg | None = None
        self._streams: dict[str, _Stream] = {}
        self._pending: _Pending | None = None
        self._directions: dict[tuple[Side, str], str] = {}
        self._to_plain_stats = DirectionStats()
        self._to_webrtc_stats = DirectionStats()
        self._to_plain = Forwarder(stats=self._to_plain_stats)
        self._pumps = RelayPumps()  # the C relay path's share of the packets
        self._retired_frames = 0  # frames of transcoders replaced by a renegotiation
        self._closed = False
        self.failure: str | None = None
        self.on_failure: Callable[[str], None] | None = None  # media workers report it upstream

    # -- public API ----------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    async def process_offer(self, sdp: str, from_side: Side) -> str:
        self._check_open()
        description = parse(sdp)
        lines = self._accept_lines(description, from_side)
        await self._open_streams(lines)
        await self._apply_remote(from_side, description, is_offer=True)
        return await self._offer_to(other(from_side), from_side, description, lines)

    async def process_answer(self, sdp: str, from_side: Side) -> str:
        self._check_open()
        pending = self._pending
        if (pending is None or pending.offerer == from_side
                or pending.offered_to not in (None, from_side)):
            raise MediaError(status=500, reason=f"answer from {from_side} without an offer to it")
        description = parse(sdp)
        if pending.offerer == "gateway":
            return await self._late_offer_answered(from_side, description)
        await self._apply_remote(from_side, description, is_offer=False)
        answer = self._conclude(pending, other(from_side), from_side, description)
        self._pending = None
        return answer if pending.answer_to_offerer else ""

    async def create_offer(self, to_side: Side) -> str:
        """Late offer: the gateway's own capabilities, audio only."""
        self._check_open()
        stream = await self._stream("audio")
        if to_side == "webrtc":
            await self._webrtc_leg(ice_controlling=True)
        codecs = list(GATEWAY_AUDIO)
        self._pending = _Pending(
            offerer="gateway", offered={"audio": codecs},
            directions={"audio": "sendrecv"}, lines=[], offered_to=to_side,
        )
        section = MediaSection(
            kind="audio", port=self._local_port(to_side, stream), codecs=codecs,
            mid=stream.mid, ptime=_PTIME_MS, msid=self._msid("audio"),
        )
        return self._write(to_side, [section], offering=True)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pumps.stop()
        log.info("media %s closed: %s", self.session_id, self.stats())
        for stream in self._streams.values():
            stream.plain.close()
        self._streams.clear()
        if self._webrtc is not None:
            await self._webrtc.close()
            self._webrtc = None
        # The routes hold the plain legs, whose handlers led back here (each plain leg's
        # forwarder to WebRTC went with its leg's close): dropped, the ended call is freed by
        # reference counting rather than by a (rare) full collection.
        self._to_plain.routes = {}
        self._on_closed(self.session_id)

    def stats(self) -> dict[str, int]:
        self._pumps.flush()
        frames = self._retired_frames + sum(
            t.frames for s in self._streams.values() for t in s.transcoders)
        srtp_errors = self._webrtc.srtp_errors if self._webrtc is not None else 0
        return {
            "webrtc_to_plain_packets": self._to_plain_stats.packets,
            "webrtc_to_plain_bytes": self._to_plain_stats.bytes,
            "plain_to_webrtc_packets": self._to_webrtc_stats.packets,
            "plain_to_webrtc_bytes": self._to_webrtc_stats.bytes,
            "transcoded_frames": frames,
            "lost": self._to_plain_stats.lost + self._to_webrtc_stats.lost,
            "dropped": self._to_plain_stats.dropped + self._to_webrtc_stats.dropped,
            "srtp_errors": srtp_errors,
            # included in "dropped": packets from a source the plain leg did not latch onto
            "foreign_dropped": sum(s.plain.foreign_packets for s in self._streams.values()),
        }

    @property
    def open_ports(self) -> list[int]:
        ports = [s.plain.port for s in self._streams.values()]
        if self._webrtc is not None:
            ports.append(self._webrtc.local_port)
        return ports

    # -- offer side ----------------------------------------------------------------------

    def _accept_lines(
        self, description: SessionDescription, side: Side
    ) -> list[tuple[MediaDescription, str | None]]:
        lines: list[tuple[MediaDescription, str | None]] = []
        seen: set[str] = set()
        for media in description.media:
            usable = (
                media.kind in KINDS and not media.rejected and media.kind not in seen
                and bool(relayable(media.kind, media.codecs))
            )
            if usable and side == "webrtc" and media.is_webrtc is False:
                usable = False
            lines.append((media, media.kind if usable else None))
            if usable:
                seen.add(media.kind)
        if "audio" not in seen:
            kinds = {m.kind for m in description.media}
            reason = ("no acceptable audio codec" if "audio" in kinds
                      else "no audio m-line")
            raise MediaError(reason=reason)
        if side == "webrtc":
            audio = description.first("audio")
            assert audio is not None
            if not audio.fingerprints:
                raise MediaError(reason="WebRTC SDP without DTLS fingerprint")
            if not audio.ice_ufrag or not audio.ice_pwd:
                raise MediaError(reason="WebRTC SDP without ICE credentials")
        return lines

    async def _offer_to(
        self, target: Side, offerer: Side, description: SessionDescription,
        lines: list[tuple[MediaDescription, str | None]], answer_to_offerer: bool = True,
    ) -> str:
        if target == "webrtc":
            await self._webrtc_leg(ice_controlling=True)
        sections = []
        offered: dict[str, list[Codec]] = {}
        directions: dict[str, str] = {}
        for media, kind in lines:
            if kind is None:
                continue
            stream = await self._stream(kind)
            if offerer == "webrtc" and media.mid is not None:
                stream.mid = media.mid
            offered[kind] = media.codecs
            directions[kind] = media.direction
            sections.append(MediaSection(
                kind=kind, port=self._local_port(target, stream),
                codecs=offer_codecs(kind, media.codecs, for_webrtc=target == "webrtc"),
                direction=media.direction, mid=stream.mid,
                ptime=_PTIME_MS if kind == "audio" and target == "plain" else None,
                msid=self._msid(kind),
            ))
        self._pending = _Pending(offerer=offerer, offered=offered, directions=directions,
                                 lines=lines, answer_to_offerer=answer_to_offerer)
        return self._write(target, sections, offering=True)

    async def _late_offer_answered(self, side: Side, description: SessionDescription) -> str:
        """First half of a late offer done: the answer to the gateway's offer becomes the
        offer towards the other leg, whose answer then concludes the negotiation."""
        lines = self._accept_lines(description, side)
        await self._open_streams(lines)
        await self._apply_remote(side, description, is_offer=False)
        return await self._offer_to(other(side), side, description, lines,
                                    answer_to_offerer=False)

    # -- answer side ---------------------------------------------------------------------

    def _conclude(
        self, pending: _Pending, offerer: Side, answerer: Side,
        description: SessionDescription,
    ) -> str:
        sections = []
        for media, kind in pending.lines:
            answer = description.first(kind) if kind is not None else None
            stream = self._streams.get(kind) if kind is not None else None
            if kind is None or answer is None or stream is None:
                if kind == "audio":
                    raise MediaError(reason="audio rejected by the other side")
                sections.append(_rejected(media))
                continue
            stream.agreement = agree(kind, pending.offered[kind], answer.codecs)
            stream.webrtc_is_offerer = offerer == "webrtc"
            stream.may_send = {offerer: pending.offered[kind], answerer: answer.codecs}
            self._directions[(offerer, kind)] = pending.directions[kind]
            self._directions[(answerer, kind)] = answer.direction
            codec, events = stream.codec(offerer)
            if offerer == "webrtc":
                codec = webrtc_feedback(codec)
            sections.append(MediaSection(
                kind=kind, port=self._local_port(offerer, stream),
                codecs=[codec] + ([events] if events else []), direction=answer.direction,
                mid=media.mid if offerer == "webrtc" else None,
                ptime=_PTIME_MS if kind == "audio" and offerer == "plain" else None,
                msid=self._msid(kind),
            ))
        self._rewire()
        for stream in self._streams.values():
            if stream.agreement is not None:
                log.info(
                    "media %s %s: webrtc %s / plain %s (%s), webrtc %s, plain %s",
                    self.session_id, stream.kind, stream.codec("webrtc")[0].name,
                    stream.codec("plain")[0].name,
                    "transcoding" if stream.agreement.transcoding else "relay",
                    self._directions.get(("webrtc", stream.kind)),
                    self._directions.get(("plain", stream.kind)))
        if not pending.answer_to_offerer:
            return ""
        return self._write(offerer, sections, offering=False)

    def _rewire(self) -> None:
        """Install the packet routes for the current agreements and directions."""
        assert self._webrtc is not None
        webrtc = self._webrtc
        to_plain: dict[int, Route] = {}
        for stream in self._streams.values():
            self._retired_frames += sum(t.frames for t in stream.transcoders)
            stream.transcoders.clear()
            to_webrtc: dict[int, Route] = {}
            if stream.agreement is not None:
                if self._flows("webrtc", "plain", stream.kind):
                    to_plain.update(self._routes(stream, "webrtc", stream.plain))
                if self._flows("plain", "webrtc", stream.kind):
                    to_webrtc = self._routes(stream, "plain", webrtc)
            forwarder = Forwarder(stats=self._to_webrtc_stats, routes=to_webrtc)
            stream.plain.on_rtp = forwarder
            stream.plain.on_rtcp = self._rtcp_to_webrtc(stream)
        self._to_plain.routes = to_plain
        webrtc.on_rtp = self._to_plain
        webrtc.on_rtcp = self._rtcp_to_plain
        self._refresh_pumps()

    def _refresh_pumps(self) -> None:
        """Legs or routes changed: the C relay path relays what it now may (webrtc.relay_pumps)."""
        if not self._closed:
            self._pumps.refresh(self._webrtc, [s.plain for s in self._streams.values()])

    def _routes(
        self, stream: _Stream, source: Side, leg: PlainLeg | WebRtcLeg
    ) -> dict[int, Route]:
        """A route for every payload type the source may send: relayed when it is the codec
        the target expects, transcoded when convertible, absent (dropped) otherwise."""
        send = leg.send_rtp
        target, target_events = stream.codec(other(source))
        declared = stream.may_send.get(source, [])
        routes: dict[int, Route] = {}
        for codec in declared:
            if codec.key == target.key:
                routes[codec.payload_type] = Route(target.payload_type, send, target=leg)
                events = events_for_clock(declared, codec.clock_rate)
                if events is not None and target_events is not None:
                    routes[events.payload_type] = Route(target_events.payload_type, send,
                                                        target=leg)
            elif target.name.lower() in TRANSCODABLE.get(codec.name.lower(), ()):
                events = events_for_clock(declared, codec.clock_rate)
                transcoder = _LazyTranscoder(stream, codec, target, events, target_events)
                routes.setdefault(codec.payload_type, Route(target.payload_type, send,
                                                            transcoder))
                if events is not None and events.payload_type not in routes:
                    routes[events.payload_type] = Route(target.payload_type, send, transcoder)
        return routes

    def _flows(self, source: Side, target: Side, kind: str) -> bool:
        sends = self._directions.get((source, kind), "sendrecv") in ("sendrecv", "sendonly")
        receives = self._directions.get((target, kind), "sendrecv") in ("sendrecv", "recvonly")
        return sends and receives

    def _rtcp_to_webrtc(self, stream: _Stream) -> Callable[[bytes], None]:
        def forward(packet: bytes) -> None:
            kept = without_bye(packet)
            if self._webrtc is not None and kept is not None and not stream.transcoders:
                self._webrtc.send_rtcp(kept)
        return forward

    def _rtcp_to_plain(self, packet: bytes) -> None:
        # Reports from the browser go to the plain stream whose media they describe;
        # transcoded streams end RTCP at the gateway (the SSRCs would not match).
        stream = self._stream_for_report(packet)
        kept = without_bye(packet)
        if stream is not None and kept is not None and not stream.transcoders:
            stream.plain.send_rtcp(kept)

    def _stream_for_report(self, packet: bytes) -> _Stream | None:
        if len(self._streams) == 1:
            return next(iter(self._streams.values()))
        offset = 28 if len(packet) > 1 and packet[1] == 200 else 8  # SR or RR report block
        reported = int.from_bytes(packet[offset:offset + 4], "big")
        for stream in self._streams.values():
            forwarder = stream.plain.on_rtp
            if isinstance(forwarder, Forwarder) and reported in forwarder.known_ssrcs:
                return stream
        return self._streams.get("audio")

    # -- transports ----------------------------------------------------------------------

    async def _apply_remote(
        self, side: Side, description: SessionDescription, *, is_offer: bool
    ) -> None:
        if side == "plain":
            for kind in KINDS:
                media = description.first(kind)
                stream = self._streams.get(kind)
                if media is not None and stream is not None and media.address:
                    stream.plain.set_remote(media.address, media.port, media.rtcp_port,
                                            media.rtcp_mux)
            return
        media = description.first("audio")
        if media is None or not media.fingerprints:
            raise MediaError(reason="WebRTC SDP without DTLS fingerprint")
        leg = await self._webrtc_leg(ice_controlling=not is_offer)
        if leg.needs_ice_restart(media):
            # The side whose offer restarts ICE controls the new generation.
            await leg.restart_ice(ice_controlling=not is_offer)
        # An existing association keeps its role; a new one takes the role a=setup leaves.
        role = _dtls_role(media.setup) if leg.needs_new_dtls(media) else leg.dtls_role
        assert role is not None
        leg.start(media, role)

    async def _webrtc_leg(self, *, ice_controlling: bool) -> WebRtcLeg:
        if self._webrtc is None:
            self._webrtc = WebRtcLeg(
                pool=self._context.pool, public_host=self._context.public_host,
                certificate=self._context.certificate(), stun_server=self._context.stun_server,
                tcp_listener=self._context.tcp_listener,
            )
            self._webrtc.on_failure = self._leg_failed
            self._webrtc.on_change = self._refresh_pumps
            await self._webrtc.prepare(ice_controlling=ice_controlling)
        return self._webrtc

    def _leg_failed(self, reason: str) -> None:
        log.warning("session %s: %s", self.session_id, reason)
        self.failure = reason
        if self.on_failure is not None:
            self.on_failure(reason)

    async def _open_streams(self, lines: list[tuple[MediaDescription, str | None]]) -> None:
        for _, kind in lines:
            if kind is not None:
                await self._stream(kind)

    async def _stream(self, kind: str) -> _Stream:
        stream = self._streams.get(kind)
        if stream is None:
            plain = PlainLeg(self._context.pool, self._context.latch)
            plain.on_change = self._refresh_pumps
            await plain.open()
            stream = _Stream(kind=kind, plain=plain, mid=str(len(self._streams)))
            self._streams[kind] = stream
        return stream

    def _local_port(self, side: Side, stream: _Stream) -> int:
        if side == "plain":
            return stream.plain.port
        assert self._webrtc is not None
        return self._webrtc.local_port

    def _write(self, side: Side, sections: list[MediaSection], *, offering: bool) -> str:
        host = self._context.public_host
        if side == "plain":
            return write_plain(self._origins["plain"], host, sections)
        assert self._webrtc is not None
        role = self._webrtc.dtls_role
        setup = "actpass" if offering else ("active" if role == "client" else "passive")
        for section in sections:
            if section.port != 0:
                section.port = self._webrtc.local_port
        return write_webrtc(self._origins["webrtc"], host, sections,
                            self._webrtc.local_params(setup))

    def _msid(self, kind: str) -> str:
        return f"ws2sip-{self.session_id} {kind}-{self.session_id}"

    def _check_open(self) -> None:
        if self._closed:
            raise MediaError(status=500, reason=f"media session {self.session_id} is closed")


class _LazyTranscoder:
    """Creates the codec contexts on the first packet: most offered-but-unused codecs never
    send one."""

    def __init__(self, stream: _Stream, source: Codec, target: Codec,
                 source_events: Codec | None, target_events: Codec | None) -> None:
        self._stream = stream
        self._arguments = (source, target, source_events, target_events)
        self._transcoder: AudioTranscoder | None = None

    def __call__(self, packet: bytes) -> list[bytes]:
        if self._transcoder is None:
            self._transcoder = AudioTranscoder(*self._arguments)
            self._stream.transcoders.append(self._transcoder)
        return self._transcoder(packet)


def _dtls_role(remote_setup: str | None) -> DtlsRole:
    """RFC 5763: the gateway takes the role the peer left open. An offered actpass is
    answered active, so the gateway is the client (Chromium stalls if answered passive);
    a browser answering active to the gateway's actpass makes the gateway the server."""
    return "server" if remote_setup == "active" else "client"


def _rejected(media: MediaDescription) -> MediaSection:
    return MediaSection(kind=media.kind, port=0, codecs=[], mid=media.mid,
                        rejected_protocol=media.protocol, rejected_payloads=media.payloads)
