"""TCP and TLS connections carrying SIP framed by Content-Length (RFC 3261 §18.3)."""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import cast

from .errors import SipError
from .flow import Flow, address
from .framing import KEEPALIVE_PING, PONG, StreamFramer
from .message import Limits
from .udp import FlowOwner

log = logging.getLogger(f"ws2sip.{__name__}")

# A peer that stops reading must not make us buffer without bound: past this, drop the flow.
MAX_WRITE_BUFFER = 4 * 1024 * 1024

_stream_ids = itertools.count(1)


class StreamFlow(asyncio.Protocol, Flow):
    def __init__(self, owner: FlowOwner, transport_name: str, limits: Limits) -> None:
        self._owner = owner
        self._transport_name = transport_name
        self._framer = StreamFramer(limits)
        self._transport: asyncio.Transport | None = None
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        Flow.__init__(
            self,
            f"{self._transport_name}:{next(_stream_ids)}",
            self._transport_name,
            address(transport.get_extra_info("sockname")),
            address(transport.get_extra_info("peername")),
            secure=self._transport_name == "tls",
        )
        if not self._owner.has_room_for_flow():
            self._owner.refuse_over_capacity(b"", self)  # logs; nothing to answer yet
            self._closed = True
            self._transport.close()
            return
        self._owner.register_flow(self)

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return  # refused for want of room, or closing: nothing more is read
        self.touch()
        try:
            for item in self._framer.feed(data):
                if item is KEEPALIVE_PING:
                    self.send(PONG)
                else:
                    assert isinstance(item, bytes)
                    self._owner.receive(item, self)
        except SipError as error:
            # Framing is lost for good: the only recovery is a new connection (§18.3).
            log.warning("%s: closing, unframeable stream: %s", self.id, error)
            self.close()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.info("%s: connection lost: %s", self.id, exc)
        self._closed = True
        self._owner.unregister_flow(self)

    def send(self, data: bytes) -> None:
        transport = self._transport
        if self._closed or transport is None or transport.is_closing():
            log.warning("%s: closed, dropping %d bytes", getattr(self, "id", "stream"), len(data))
            return
        transport.write(data)
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            log.warning("%s: peer not reading (%d bytes queued), closing",
                        self.id, transport.get_write_buffer_size())
            transport.abort()

    def close(self) -> None:
        if not self._closed and self._transport is not None:
            self._closed = True
            self._transport.close()

    @property
    def closed(self) -> bool:
        return self._closed
