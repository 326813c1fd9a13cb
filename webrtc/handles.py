"""What the gateway needs of a media relay, met both by MediaRelay (in the gateway's process)
and by MediaWorkers (in worker processes)."""

from __future__ import annotations

from typing import Protocol

from .session import Side


class SessionHandle(Protocol):
    session_id: str
    failure: str | None

    async def process_offer(self, sdp: str, from_side: Side) -> str: ...

    async def process_answer(self, sdp: str, from_side: Side) -> str: ...

    async def create_offer(self, to_side: Side) -> str: ...

    async def close(self) -> None: ...


class RelayHandle(Protocol):
    def create_session(self, session_id: str) -> SessionHandle: ...

    @property
    def active_sessions(self) -> int: ...

    async def close(self) -> None: ...
