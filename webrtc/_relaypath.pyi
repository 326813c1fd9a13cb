"""Types of the C relay path (webrtc/_relaypath.c)."""

from collections.abc import Callable
from typing import Any

MAX_DATAGRAM: int
MAX_SRTP_TRAILER: int
MAX_DESTINATIONS: int

SrtpOperation = tuple[int, int, int, Any]  # function address, context address, room, Session

class RelayPump:
    on_packet: Callable[[bytes], None] | None
    @property
    def relaying(self) -> bool: ...
    @property
    def closed(self) -> bool: ...
    @property
    def relayed(self) -> int: ...
    def __init__(
        self, fd: int, lag: Any, on_datagram: Callable[[bytes, Any], None],
        on_error: Callable[[Exception], None],
    ) -> None: ...
    def __call__(self) -> None: ...
    def relay(
        self, *, routes: dict[int, tuple[int, int]],
        destinations: list[tuple[RelayPump, tuple[Any, ...]]], srtp_in: SrtpOperation | None,
        srtp_out: SrtpOperation | None, expected_seq: dict[int, int], max_ssrcs: int,
        stats: Any,
    ) -> None: ...
    def stop(self) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...
