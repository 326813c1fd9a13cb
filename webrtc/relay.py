"""The media relay of one gateway process: port range, DTLS certificate, sessions."""

from __future__ import annotations

import ipaddress
import socket

from .dtls import DtlsCertificate
from .ice_tcp import IceTcpListener
from .plain import LatchPolicy
from .ports import PortPool
from .session import MediaSession, RelayContext

_STUN_PORT = 3478


class MediaRelay:
    """One per gateway process: owns the UDP port range, the DTLS certificate and the config."""

    def __init__(
        self, *, bind_host: str = "127.0.0.1", public_host: str | None = None,
        port_min: int = 20000, port_max: int = 40000, stun_servers: list[str] | None = None,
        latch: LatchPolicy | None = None, ice_tcp_listen: tuple[str, int] | None = None,
        ice_tcp_advertised_port: int = 0, ice_tcp_handoffs: socket.socket | None = None,
        ice_tcp_ufrag_prefix: str = "",
    ) -> None:
        """ice_tcp_listen: (host, port) of the ICE-TCP listener (webrtc.ice_tcp), started by
        start(); None offers UDP candidates only. ice_tcp_advertised_port: the port put in the
        TCP candidates when it differs (a port forward, 443 outside); 0: the bound one.
        In a media worker, ice_tcp_handoffs instead: the socket the gateway process hands the
        connections over on, whose ufrag starts with ice_tcp_ufrag_prefix."""
        if public_host is None and ipaddress.ip_address(bind_host).is_unspecified:
            raise ValueError(f"bind_host {bind_host} needs a public_host to put into SDP")
        self._pool = PortPool(bind_host, port_min, port_max)
        self._certificate = DtlsCertificate()
        self._sessions: dict[str, MediaSession] = {}
        self._tcp_listener: IceTcpListener | None = None
        self._tcp_handoffs = ice_tcp_handoffs
        if ice_tcp_listen is not None:
            self._tcp_listener = IceTcpListener(*ice_tcp_listen,
                                                advertised_port=ice_tcp_advertised_port)
        elif ice_tcp_handoffs is not None:
            self._tcp_listener = IceTcpListener("", 0, advertised_port=ice_tcp_advertised_port,
                                                ufrag_prefix=ice_tcp_ufrag_prefix)
        self._context = RelayContext(
            pool=self._pool, public_host=public_host or bind_host,
            certificate=self._current_certificate,
            stun_server=_stun_address(stun_servers[0]) if stun_servers else None,
            latch=latch if latch is not None else LatchPolicy(),
            tcp_listener=self._tcp_listener,
        )

    async def start(self) -> None:
        """Open the ICE-TCP listener, where one is configured (UDP ports open per call)."""
        if self._tcp_listener is None:
            return
        if self._tcp_handoffs is not None:
            self._tcp_listener.serve_handoffs(self._tcp_handoffs)
        else:
            await self._tcp_listener.start()

    @property
    def tcp_listener(self) -> IceTcpListener | None:
        return self._tcp_listener

    def create_session(self, session_id: str) -> MediaSession:
        if session_id in self._sessions:
            raise ValueError(f"media session {session_id!r} already exists")
        session = MediaSession(self._context, session_id, self._forget)
        self._sessions[session_id] = session
        return session

    def get_session(self, session_id: str) -> MediaSession | None:
        return self._sessions.get(session_id)

    def stats(self) -> dict[str, int]:
        """Every open session's counters (MediaSession.stats) added up."""
        totals: dict[str, int] = {}
        for session in self._sessions.values():
            for key, value in session.stats().items():
                totals[key] = totals.get(key, 0) + value
        return totals

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    @property
    def open_ports(self) -> frozenset[int]:
        """Every UDP port the relay holds right now (empty once all sessions are closed)."""
        return self._pool.open_ports

    async def close(self) -> None:
        for session in list(self._sessions.values()):
            await session.close()
        if self._tcp_listener is not None:
            await self._tcp_listener.close()

    def _current_certificate(self) -> DtlsCertificate:
        # aiortc's certificates are valid for 30 days; long-running gateways renew them.
        if self._certificate.expiring:
            self._certificate = DtlsCertificate()
        return self._certificate

    def _forget(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)


def _stun_address(server: str) -> tuple[str, int]:
    """'stun:host:port', 'host:port' or 'host' as (host, port)."""
    value = server.removeprefix("stun:")
    host, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    return (host or value, int(port) if port else _STUN_PORT)
