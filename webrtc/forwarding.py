"""The per-packet path between legs: payload type mapping, direction gating, counters.

Kept to a few byte operations per packet: the RTP header is not parsed, SSRC, sequence
numbers and timestamps pass through untouched (so the receiver sees the sender's own
continuous stream and RTCP reports stay meaningful), only the payload type byte is rewritten
when the two legs numbered the codec differently.

webrtc.relay_pumps has the C relay path do the same for latched relay-only routes, adding into
the same DirectionStats. While it does, loss is counted on its SequenceTable (`sequences`), by
the C path and this one alike, so the count runs on whichever path a packet takes; the table
keeps expected_seq's keys current and writes its values back when the C path stops or flushes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Sender = Callable[[bytes], object]
MAX_TRACKED_SSRCS = 32  # a stream has one or two; more means someone sprays junk at the port


@dataclass
class DirectionStats:
    packets: int = 0
    bytes: int = 0
    dropped: int = 0
    lost: int = 0


@dataclass
class Route:
    """Packets of one payload type: where they go and with which payload type."""

    payload_type: int
    send: Sender
    transform: Callable[[bytes], list[bytes]] | None = None  # transcoding instead of relay
    target: Any = None  # the leg whose send_rtp `send` is, for the C relay path


@dataclass
class Forwarder:
    """One direction (e.g. webrtc -> plain) of one call."""

    stats: DirectionStats = field(default_factory=DirectionStats)
    routes: dict[int, Route] = field(default_factory=dict)
    _expected_seq: dict[int, int] = field(default_factory=dict)
    # webrtc._relaypath.SequenceTable on expected_seq while the C relay path counts this
    # direction (set and cleared by webrtc.relay_pumps)
    sequences: Any = None

    @property
    def known_ssrcs(self) -> set[int]:
        """SSRCs this direction has carried, used to route RTCP reports about them."""
        return set(self._expected_seq)

    @property
    def expected_seq(self) -> dict[int, int]:
        """SSRC -> next expected sequence number (values current once `sequences` wrote back)."""
        return self._expected_seq

    def __call__(self, packet: bytes) -> None:
        stats = self.stats
        if len(packet) < 12:
            stats.dropped += 1
            return
        payload_type = packet[1] & 0x7F
        route = self.routes.get(payload_type)
        if route is None:
            stats.dropped += 1
            return
        # Loss counting inline, from single bytes: compiled, they are C reads, where a call
        # (struct, int.from_bytes) per packet is a measurable share.
        seq = packet[2] << 8 | packet[3]
        ssrc = packet[8] << 24 | packet[9] << 16 | packet[10] << 8 | packet[11]
        sequences = self.sequences
        if sequences is not None:
            stats.lost += sequences.count(ssrc, seq)
        else:
            expected_seq = self._expected_seq
            expected = expected_seq.get(ssrc)
            if expected is None:
                if len(expected_seq) >= MAX_TRACKED_SSRCS:
                    expected_seq.clear()
            elif seq != expected:
                gap = (seq - expected) & 0xFFFF
                if gap < 1000:  # larger jumps are reordering or a restarted sender
                    stats.lost += gap
            expected_seq[ssrc] = (seq + 1) & 0xFFFF
        if route.transform is not None:
            for produced in route.transform(packet):
                route.send(produced)
                stats.packets += 1
                stats.bytes += len(produced)
            return
        if route.payload_type != payload_type:
            rewritten = bytearray(packet)
            rewritten[1] = (packet[1] & 0x80) | route.payload_type
            packet = bytes(rewritten)
        if route.send(packet) is False:
            stats.dropped += 1
            return
        stats.packets += 1
        stats.bytes += len(packet)
