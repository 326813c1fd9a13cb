"""DTLS-SRTP on the WebRTC leg: handshake over memory BIOs, fingerprint check, SRTP keys.

aiortc's RTCDtlsTransport is tied to its RTCIceTransport and its receiver pipeline, and it
cannot survive an ICE restart onto another socket; this drives pyOpenSSL directly so the
datagram path stays synchronous and transport-agnostic. Certificate creation, digests and the
SRTP profile table are reused from aiortc.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Callable
from typing import Literal

from aiortc.rtcdtlstransport import (
    SRTP_PROFILES,
    X509_DIGEST_ALGORITHMS,
    SRTPProtectionProfile,
    certificate_digest,
    generate_certificate,
)
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL
from pylibsrtp import Policy, Session

from .errors import MediaError
from .sdp import Fingerprint
from .srtp import SrtpSessions

log = logging.getLogger(f"ws2sip.{__name__}")

DtlsRole = Literal["client", "server"]
_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:"
    b"ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA"
)
_MAX_DATAGRAM = 1500
_RENEW_BEFORE = datetime.timedelta(days=2)


class DtlsCertificate:
    """The relay's self-signed certificate; its SHA-256 fingerprint goes into every SDP."""

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._cert = generate_certificate(self._key)
        self.fingerprint = Fingerprint("sha-256", certificate_digest(self._cert, "sha-256"))
        self._context = self._build_context()

    @property
    def expiring(self) -> bool:
        now = datetime.datetime.now(tz=datetime.UTC)
        return self._cert.not_valid_after_utc - now < _RENEW_BEFORE

    def new_connection(self) -> SSL.Connection:
        return SSL.Connection(self._context)

    def _build_context(self) -> SSL.Context:
        context = SSL.Context(SSL.DTLS_METHOD)
        context.set_options(SSL.OP_NO_TICKET)
        # The peer's certificate is self-signed: it is checked against the SDP fingerprint
        # after the handshake instead of against a CA.
        context.set_verify(
            SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *_: True
        )
        context.use_certificate(self._cert)
        context.use_privatekey(self._key)
        context.set_cipher_list(_CIPHERS)
        context.set_tlsext_use_srtp(b":".join(p.openssl_profile for p in SRTP_PROFILES))
        return context


class DtlsEndpoint:
    """One DTLS association. Datagrams come in via `datagram_received`; records go out via
    `send`; `on_keys` fires once with the SRTP sessions, `on_failure` with the reason."""

    def __init__(
        self, *, certificate: DtlsCertificate, role: DtlsRole,
        remote_fingerprints: list[Fingerprint], send: Callable[[bytes], None],
        on_keys: Callable[[SrtpSessions], None], on_failure: Callable[[str], None],
    ) -> None:
        if not any(f.algorithm in X509_DIGEST_ALGORITHMS for f in remote_fingerprints):
            raise MediaError(reason="no supported DTLS fingerprint algorithm in SDP")
        self.role = role
        self._remote_fingerprints = remote_fingerprints
        self._send = send
        self._on_keys = on_keys
        self._on_failure = on_failure
        self._ssl = certificate.new_connection()
        self._timer: asyncio.TimerHandle | None = None
        self._state: Literal["new", "handshaking", "connected", "failed", "closed"] = "new"

    @property
    def state(self) -> str:
        return self._state

    def start(self) -> None:
        if self._state != "new":
            return
        self._state = "handshaking"
        if self.role == "client":
            self._ssl.set_connect_state()
            self._advance()
        else:
            self._ssl.set_accept_state()

    def datagram_received(self, data: bytes) -> None:
        if self._state not in ("handshaking", "connected"):
            return
        self._ssl.bio_write(data)
        if self._state == "handshaking":
            self._advance()
            return
        try:
            self._ssl.recv(_MAX_DATAGRAM)  # retransmitted flights and alerts
        except SSL.ZeroReturnError:
            log.info("DTLS peer sent close_notify")
            self._state = "closed"
        except SSL.Error:
            pass
        self._flush()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._state == "connected":
            with contextlib.suppress(SSL.Error):
                self._ssl.shutdown()
            self._flush()
        self._state = "closed"

    def _advance(self) -> None:
        try:
            self._ssl.do_handshake()
        except SSL.WantReadError:
            self._flush()
            self._arm_timer()
            return
        except SSL.Error as exc:
            self._fail(f"DTLS handshake failed: {exc}")
            return
        self._flush()
        mismatch = self._fingerprint_mismatch()
        if mismatch:
            self._fail(mismatch)
            return
        self._state = "connected"
        self._arm_timer()  # the last flight may still need retransmitting
        self._on_keys(self._srtp_sessions())

    def _fingerprint_mismatch(self) -> str | None:
        certificate = self._ssl.get_peer_certificate(as_cryptography=True)
        if certificate is None:
            return "DTLS peer presented no certificate"
        for expected in self._remote_fingerprints:
            if expected.algorithm not in X509_DIGEST_ALGORITHMS:
                continue
            seen = certificate_digest(certificate, expected.algorithm)
            if seen != expected.value.upper():
                return f"DTLS fingerprint mismatch: SDP says {expected.value}, peer has {seen}"
        return None

    def _srtp_sessions(self) -> SrtpSessions:
        selected = self._ssl.get_selected_srtp_profile()
        profile = next(p for p in SRTP_PROFILES if p.openssl_profile == selected)
        material = self._ssl.export_keying_material(
            b"EXTRACTOR-dtls_srtp", 2 * (profile.key_length + profile.salt_length)
        )
        # RFC 5764 section 4.2: client keys come first in the exported material.
        local, remote = (0, 1) if self.role == "client" else (1, 0)
        return SrtpSessions(
            outbound=_session(profile, material, local, Policy.SSRC_ANY_OUTBOUND),
            inbound=_session(profile, material, remote, Policy.SSRC_ANY_INBOUND),
            profile=selected.decode(),
        )

    def _flush(self) -> None:
        while True:
            try:
                data = self._ssl.bio_read(_MAX_DATAGRAM)
            except SSL.Error:
                return
            if not data:
                return
            self._send(data)

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        timeout = self._ssl.DTLSv1_get_timeout()
        if timeout is not None:
            self._timer = asyncio.get_running_loop().call_later(timeout, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._state not in ("handshaking", "connected"):
            return
        self._ssl.DTLSv1_handle_timeout()
        self._flush()
        self._arm_timer()

    def _fail(self, reason: str) -> None:
        log.warning("%s", reason)
        self._state = "failed"
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._on_failure(reason)


def _session(
    profile: SRTPProtectionProfile, material: bytes, index: int, ssrc_type: int
) -> Session:
    policy = Policy(
        key=profile.get_key_and_salt(material, index), ssrc_type=ssrc_type,
        srtp_profile=profile.libsrtp_profile,
    )
    policy.allow_repeat_tx = True
    policy.window_size = 1024
    return Session(policy)
