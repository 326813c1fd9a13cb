"""Which of a call's packets the C relay path (webrtc/_relaypath.c) relays by itself.

A socket's RelayPump relays RTP of a payload type in C when the Python path would only relay
it: the route has no transcoder, its destination socket is open and known (a plain leg's RTP
target, the WebRTC leg's nominated ICE pair), SRTP is keyed, and, for packets from a plain
leg, the leg has latched (before that, its first packet must go through the latching handler).
The C path then does what the Python path does for such a packet (unprotect or protect, payload
type, Forwarder's counters) and hands everything else to Python. A plain leg's pump relays
only once the leg has latched and set the pump's `source` to the latched peer: the pump then
relays nothing from any other address (strict source, webrtc.plain.LatchPolicy).

Loss is counted on one SequenceTable per Forwarder whose direction the C path relays, shared by
all its pumps (during an ICE restart the old and the new generation's sockets both feed the
WebRTC leg's Forwarder) and by the Forwarder's own Python path, so no packet is counted against
a stale expected sequence number whichever path or socket it takes. It is loaded from the
Forwarder's dict here and written back to it when the pumps flush or stop.

The configuration is recomputed from the legs' current state whenever anything it depends on
changes (the legs' on_change, a new set of routes): one function that cannot miss a case is
safer than a patch per event. Not per packet.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .datagram import Address, DatagramSocket
from .forwarding import MAX_TRACKED_SSRCS, Forwarder
from .plain import PlainLeg
from .webrtc_leg import WebRtcLeg

if TYPE_CHECKING:
    from ._relaypath import RelayPump, SequenceTable

log = logging.getLogger(f"ws2sip.{__name__}")


class RelayPumps:
    """The pumps one media session has configured to relay."""

    def __init__(self) -> None:
        self._relaying: list[RelayPump] = []
        self._counted: list[Forwarder] = []  # those with a SequenceTable attached

    def flush(self) -> None:
        """Bring the sessions' DirectionStats and sequence dicts up to date with what C
        relayed."""
        for pump in self._relaying:
            pump.flush()

    def stop(self) -> None:
        """Everything back to the Python path (counts flushed, sequences written back)."""
        for pump in self._relaying:
            pump.stop()
        self._relaying.clear()
        for forwarder in self._counted:
            forwarder.sequences.write_back()
            forwarder.sequences = None
        self._counted.clear()

    def refresh(self, webrtc: WebRtcLeg | None, plains: list[PlainLeg]) -> None:
        self.stop()
        srtp = webrtc.srtp if webrtc is not None else None
        if webrtc is None or srtp is None:
            return
        destination = webrtc.media_destination()
        if destination is not None:
            for plain in plains:
                self._plain_to_webrtc(plain, webrtc, destination, srtp.protect.native())
        self._webrtc_to_plain(webrtc, srtp.unprotect.native())

    def _plain_to_webrtc(
        self, plain: PlainLeg, webrtc: WebRtcLeg, destination: tuple[DatagramSocket, Address],
        protect: tuple[int, int, int, Any],
    ) -> None:
        forwarder = plain.on_rtp
        pump = plain.rtp_pump
        target_socket, address = destination
        target = target_socket.pump
        if (not isinstance(forwarder, Forwarder) or pump is None or pump.closed
                or not plain.rtp_latched or pump.source is None or target is None
                or target.closed):
            return
        routes = {payload_type: (route.payload_type, 0)
                  for payload_type, route in forwarder.routes.items()
                  if route.transform is None and route.target is webrtc}
        if routes:
            self._relay(pump, forwarder, routes, [(target, address)], None, protect)

    def _webrtc_to_plain(self, webrtc: WebRtcLeg, unprotect: tuple[int, int, int, Any]) -> None:
        forwarder = webrtc.on_rtp
        if not isinstance(forwarder, Forwarder):
            return
        destinations: list[tuple[RelayPump, Address]] = []
        routes: dict[int, tuple[int, int]] = {}
        for payload_type, route in forwarder.routes.items():
            leg = route.target
            if route.transform is not None or not isinstance(leg, PlainLeg):
                continue
            target, address = leg.rtp_pump, leg.rtp_target
            if target is None or target.closed or address is None:
                continue
            entry = (target, address)
            if entry not in destinations:
                destinations.append(entry)
            routes[payload_type] = (route.payload_type, destinations.index(entry))
        if not routes:
            return
        for source in webrtc.media_sockets():
            pump = source.pump
            if pump is not None and not pump.closed:
                self._relay(pump, forwarder, routes, destinations, unprotect, None)

    def _relay(
        self, pump: RelayPump, forwarder: Forwarder, routes: dict[int, tuple[int, int]],
        destinations: list[tuple[RelayPump, Address]], srtp_in: tuple[int, int, int, Any] | None,
        srtp_out: tuple[int, int, int, Any] | None,
    ) -> None:
        try:
            pump.relay(routes=routes, destinations=destinations, srtp_in=srtp_in,
                       srtp_out=srtp_out, sequences=self._sequences(forwarder),
                       stats=forwarder.stats)
        except ValueError as error:  # e.g. an address C cannot send to: Python relays it
            log.debug("relaying in Python: %s", error)
            return
        self._relaying.append(pump)

    def _sequences(self, forwarder: Forwarder) -> SequenceTable:
        """The Forwarder's table, attached on its first pump of this configuration."""
        sequences: SequenceTable | None = forwarder.sequences
        if sequences is None:
            from ._relaypath import SequenceTable  # built, since there is a pump

            sequences = forwarder.sequences = SequenceTable(forwarder.expected_seq,
                                                            MAX_TRACKED_SSRCS)
            self._counted.append(forwarder)
        return sequences
