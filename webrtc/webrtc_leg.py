"""The WebRTC leg: one ICE transport (BUNDLE + rtcp-mux) carrying DTLS and SRTP/SRTCP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import pylibsrtp

from .datagram import Address, DatagramSocket, PacketHandler
from .dtls import DtlsCertificate, DtlsEndpoint, DtlsRole
from .ice import IceConnection, sdp_candidate
from .ice_tcp import IceTcpListener
from .plain import is_rtcp
from .ports import PortPool
from .sdp import Fingerprint, MediaDescription, WebRtcTransportParams
from .srtp import SrtpSessions

log = logging.getLogger(f"ws2sip.{__name__}")

_PENDING_LIMIT = 64  # DTLS records held while no ICE pair is nominated yet


class WebRtcLeg:
    """ICE restarts swap the ICE connection underneath while the DTLS association (and so the
    SRTP keys) survive, as RFC 8842 requires; a new remote fingerprint starts a new DTLS.

    `on_change` is called whenever keys, ICE generations or nominated pairs change: the C relay
    path (webrtc.relay_pumps) is reconfigured from it.
    """

    def __init__(
        self, *, pool: PortPool, public_host: str, certificate: DtlsCertificate,
        stun_server: tuple[str, int] | None, tcp_listener: IceTcpListener | None = None,
    ) -> None:
        self._pool = pool
        self._tcp_listener = tcp_listener
        self._public_host = public_host
        self._certificate = certificate
        self._stun_server = stun_server
        self.on_rtp: PacketHandler = _ignore
        self.on_rtcp: PacketHandler = _ignore
        self.on_failure: Callable[[str], None] = _ignore_reason
        self.on_change: Callable[[], None] = _nothing
        self._ice: IceConnection | None = None
        self._old_ice: IceConnection | None = None
        self._ice_task: asyncio.Task[None] | None = None
        self._remote_ufrag: str | None = None
        self._dtls: DtlsEndpoint | None = None
        self._remote_fingerprints: list[Fingerprint] = []
        self._srtp: SrtpSessions | None = None
        self._pending: list[bytes] = []
        self.ice_controlling = False
        self.srtp_errors = 0

    # -- local description -------------------------------------------------------------

    async def prepare(self, *, ice_controlling: bool) -> None:
        """Gather the local candidates of the first ICE generation."""
        if self._ice is None:
            self.ice_controlling = ice_controlling
            self._ice = await self._new_ice()

    async def restart_ice(self, *, ice_controlling: bool) -> None:
        """The peer sent new ICE credentials: a new generation with new credentials and port;
        the old one keeps carrying media until the new one is nominated."""
        self.ice_controlling = ice_controlling
        await self._retire(self._old_ice)
        self._old_ice = self._ice
        self._ice = await self._new_ice()
        self._remote_ufrag = None
        self.on_change()

    async def _new_ice(self) -> IceConnection:
        ice = IceConnection(
            pool=self._pool, public_host=self._public_host,
            ice_controlling=self.ice_controlling, on_datagram=self._datagram_received,
            stun_server=self._stun_server, on_nomination=self._changed,
            tcp_listener=self._tcp_listener,
        )
        await ice.gather_candidates()
        return ice

    def local_params(self, setup: str) -> WebRtcTransportParams:
        assert self._ice is not None, "prepare() first"
        return WebRtcTransportParams(
            ice_ufrag=self._ice.local_username, ice_pwd=self._ice.local_password,
            candidates=[sdp_candidate(c) for c in self._ice.local_candidates],
            fingerprint=self._certificate.fingerprint, setup=setup,
        )

    @property
    def dtls_role(self) -> DtlsRole | None:
        return self._dtls.role if self._dtls is not None else None

    @property
    def local_port(self) -> int:
        assert self._ice is not None and self._ice.bound_port is not None
        return self._ice.bound_port

    def needs_new_dtls(self, media: MediaDescription) -> bool:
        """No association yet, or the peer's certificate changed (RFC 8842 section 5)."""
        return self._dtls is None or media.fingerprints != self._remote_fingerprints

    def needs_ice_restart(self, media: MediaDescription) -> bool:
        return self._remote_ufrag is not None and media.ice_ufrag != self._remote_ufrag

    @property
    def keyed(self) -> bool:
        return self._srtp is not None

    # -- remote description ------------------------------------------------------------

    def start(self, media: MediaDescription, dtls_role: DtlsRole) -> None:
        """Apply the remote ICE/DTLS parameters; idempotent for an unchanged description."""
        assert self._ice is not None, "prepare() first"
        if self._remote_ufrag is None:
            self._ice.remote_username = media.ice_ufrag
            self._ice.remote_password = media.ice_pwd
            self._remote_ufrag = media.ice_ufrag
            self._ice.add_sdp_candidates(media.candidates)
            self._ice_task = asyncio.create_task(self._connect(self._ice))
        if self.needs_new_dtls(media):
            self._start_dtls(media.fingerprints, dtls_role)

    def _start_dtls(self, fingerprints: list[Fingerprint], role: DtlsRole) -> None:
        if self._dtls is not None:
            self._dtls.close()
        self._srtp = None
        self.on_change()
        self._remote_fingerprints = fingerprints
        self._dtls = DtlsEndpoint(
            certificate=self._certificate, role=role, remote_fingerprints=fingerprints,
            send=self._send_dtls, on_keys=self._keys_ready, on_failure=self.on_failure,
        )
        if role == "server" or (self._ice is not None and self._ice.connected):
            self._dtls.start()

    async def _connect(self, ice: IceConnection) -> None:
        try:
            await ice.connect_when_peer_known()
        except (ConnectionError, TimeoutError) as exc:
            if ice is self._ice:
                self.on_failure(f"ICE failed: {exc!r}")
            return
        if ice is not self._ice:
            return
        await self._retire(self._old_ice)
        self._old_ice = None
        self.on_change()
        if self._dtls is not None:
            self._dtls.start()  # a client starts only now; a server already listens
        pending, self._pending = self._pending, []
        for record in pending:
            self._send(record)

    async def _retire(self, ice: IceConnection | None) -> None:
        if ice is not None:
            with contextlib.suppress(Exception):
                await ice.close()

    def _keys_ready(self, sessions: SrtpSessions) -> None:
        log.info("DTLS-SRTP keyed with %s (%s)", sessions.profile, self.dtls_role)
        self._srtp = sessions
        self.on_change()

    def _changed(self) -> None:
        self.on_change()

    @property
    def srtp(self) -> SrtpSessions | None:
        return self._srtp

    def media_sockets(self) -> list[DatagramSocket]:
        """The sockets SRTP from the browser may arrive on: the current ICE generation's and
        the one it replaces."""
        return [s for ice in (self._ice, self._old_ice) if ice is not None for s in ice.sockets]

    def media_destination(self) -> tuple[DatagramSocket, Address] | None:
        """Where _send sends now: the socket and remote address of the nominated pair."""
        for ice in (self._ice, self._old_ice):
            pair = ice.nominated_pair if ice is not None else None
            if pair is not None:
                transport = pair.protocol.transport
                if isinstance(transport, DatagramSocket):
                    return transport, pair.remote_addr
                return None
        return None

    # -- datagram path -----------------------------------------------------------------

    def _datagram_received(self, data: bytes) -> None:
        first = data[0]
        if 127 < first < 192:
            srtp = self._srtp
            if srtp is None:
                return
            try:
                if 192 <= data[1] <= 223:
                    self.on_rtcp(srtp.unprotect_rtcp.apply(data))
                else:
                    self.on_rtp(srtp.unprotect.apply(data))
            except pylibsrtp.Error:
                self.srtp_errors += 1
        elif 19 < first < 64 and self._dtls is not None:
            self._dtls.datagram_received(data)

    def send_rtp(self, packet: bytes) -> bool:
        srtp = self._srtp
        if srtp is None:
            return False
        return self._send(srtp.protect.apply(packet))

    def send_rtcp(self, packet: bytes) -> bool:
        srtp = self._srtp
        if srtp is None or not is_rtcp(packet):
            return False
        return self._send(srtp.protect_rtcp.apply(packet))

    def _send(self, data: bytes) -> bool:
        """On the current ICE generation's nominated pair, else on the one it replaces."""
        ice = self._ice
        if ice is not None and ice.media_route.send(data):
            return True
        old = self._old_ice
        return old is not None and old.media_route.send(data)

    def _send_dtls(self, record: bytes) -> None:
        if not self._send(record) and len(self._pending) < _PENDING_LIMIT:
            self._pending.append(record)

    async def close(self) -> None:
        if self._dtls is not None:
            self._dtls.close()
            self._dtls = None
        if self._ice_task is not None:
            self._ice_task.cancel()
            # Not awaited: a connect() cancelled while aioice runs its checks may not finish
            # (seen with an offer refused for its fingerprint after ICE started), and closing
            # the session must not wait for it. Closing the connections below ends it.
            self._ice_task = None
        for ice in (self._ice, self._old_ice):
            await self._retire(ice)
        self._ice = self._old_ice = None
        self._srtp = None
        self.on_change()
        # As PlainLeg.close: the handlers lead back to the session that holds this leg.
        self.on_rtp = self.on_rtcp = _ignore
        self.on_failure = _ignore_reason
        self.on_change = _nothing


def _ignore(_: bytes) -> None:
    pass


def _ignore_reason(_: str) -> None:
    pass


def _nothing() -> None:
    pass
