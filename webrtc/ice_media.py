"""ICE's share of the per-packet media path, compiled by mypyc (setup.py): the ICE socket's
demultiplexer and sending on the nominated candidate pair.

The rest of ICE (webrtc.ice) stays interpreted: it subclasses aioice's Connection, and none of
it runs per packet.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aioice.ice import CandidatePair, StunProtocol

from .datagram import Address

COMPONENT = 1  # rtcp-mux: one component carries RTP, RTCP and DTLS


class MediaFirstProtocol(StunProtocol):
    """RFC 7983 demultiplexing by first byte before aioice sees a datagram: only STUN (0-3)
    goes through aioice's parser; RTP/RTCP (128-191) and DTLS (20-63) go straight to the
    relay's handler (not through the Connection), which keeps a failed STUN parse and its
    exception, and a call level, off the per-packet path."""

    def __init__(self, receiver: Any, on_media: Callable[[bytes], None]) -> None:
        super().__init__(receiver)
        self.on_media = on_media

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        # on_media leads back to the ICE connection, whose check list holds this protocol: a
        # reference cycle per call that only the (rare) full collection would free otherwise.
        self.on_media = _drop_media

    def datagram_received(self, data: bytes | str, addr: Address) -> None:
        # The event loop hands datagrams over as bytes; an empty one goes to aioice.
        if isinstance(data, bytes) and data and data[0] > 3:
            self.on_media(data)
            return
        super().datagram_received(data, addr)


class NominatedRoute:
    """Sends on an ICE connection's nominated pair without a coroutine.

    It reads aioice's own dictionary of nominated pairs, so a new nomination (ICE restart,
    a better pair) takes effect with the next packet. The pair's sendto and remote address are
    looked up once per pair, not per packet: aioice builds remote_addr anew on each access.
    """

    def __init__(self, nominated: dict[int, CandidatePair]) -> None:
        self._nominated = nominated
        self._pair: CandidatePair | None = None
        self._sendto: Callable[[bytes, Address], object] | None = None
        self._address: Address = ()

    def send(self, data: bytes) -> bool:
        """False while no pair is nominated."""
        pair = self._nominated.get(COMPONENT)
        if pair is None:
            return False
        sendto = self._sendto
        if pair is not self._pair or sendto is None:
            sendto = self._sendto = pair.protocol.transport.sendto
            self._address = pair.remote_addr
            self._pair = pair
        sendto(data, self._address)
        return True


def _drop_media(data: bytes) -> None:
    """A closed socket's media handler: nothing arrives after connection_lost."""
