"""UDP listening sockets and the per-peer flows that share them (RFC 3261 §18.1.1, §18.2.1)."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol, cast

from .flow import Address, Flow, address, format_address

log = logging.getLogger(f"ws2sip.{__name__}")


class FlowOwner(Protocol):
    def receive(self, data: bytes, flow: Flow) -> None: ...
    def register_flow(self, flow: Flow) -> None: ...
    def unregister_flow(self, flow: Flow) -> None: ...
    def has_room_for_flow(self) -> bool: ...
    def refuse_over_capacity(self, data: bytes, flow: Flow) -> None: ...


class UdpFlow(Flow):
    """One remote address seen through one UDP socket; closing it only forgets the peer."""

    def __init__(self, endpoint: UdpEndpoint, remote: Address) -> None:
        local = endpoint.local
        super().__init__(
            f"udp:{format_address(local)}>{format_address(remote)}", "udp", local, remote,
            secure=False,
        )
        self._endpoint = endpoint
        self._closed = False

    def send(self, data: bytes) -> None:
        self._endpoint.send_to(data, self.remote)

    def send_from_same_socket(self, data: bytes, remote: Address) -> None:
        """Send to another address from the socket this flow lives on (responses per §18.2.2)."""
        self._endpoint.send_to(data, remote)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._endpoint.forget(self)

    @property
    def closed(self) -> bool:
        return self._closed


class UdpEndpoint(asyncio.DatagramProtocol):
    def __init__(self, owner: FlowOwner) -> None:
        self._owner = owner
        self._transport: asyncio.DatagramTransport | None = None
        self.local: Address = ("", 0)
        self._flows: dict[Address, UdpFlow] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        self.local = address(transport.get_extra_info("sockname"))

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
        remote = address(addr)
        flow = self._flows.get(remote)
        if flow is None:
            if not self._owner.has_room_for_flow():
                # Answered through a flow that is never registered: nothing is kept.
                self._owner.refuse_over_capacity(data, UdpFlow(self, remote))
                return
            flow = self.flow_to(remote)
        flow.touch()
        self._owner.receive(data, flow)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors arrive here without telling which datagram caused them; the transaction
        # timers turn the silence into a 408, so a log line is all that is useful.
        log.info("UDP socket %s: %s", format_address(self.local), exc)

    def connection_lost(self, exc: Exception | None) -> None:
        for flow in list(self._flows.values()):
            flow.close()

    def flow_to(self, remote: Address) -> UdpFlow:
        flow = self._flows.get(remote)
        if flow is None:
            flow = self._flows[remote] = UdpFlow(self, remote)
            self._owner.register_flow(flow)
        return flow

    def forget(self, flow: UdpFlow) -> None:
        if self._flows.get(flow.remote) is flow:
            del self._flows[flow.remote]
        self._owner.unregister_flow(flow)

    def send_to(self, data: bytes, remote: Address) -> None:
        if self._transport is None or self._transport.is_closing():
            log.warning("UDP socket %s closed: dropping %d bytes to %s",
                        format_address(self.local), len(data), format_address(remote))
            return
        self._transport.sendto(data, remote)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
