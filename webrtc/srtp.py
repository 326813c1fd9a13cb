"""libsrtp's protect/unprotect for the per-packet path, called straight through pylibsrtp's
cffi binding.

pylibsrtp's Session methods allocate an `int *` with cffi, check the argument's type and call
a checking helper on every packet; that wrapper cost as much CPU as libsrtp's own crypto
(bench/media_path.py, see the commit). SrtpTransform does the same calls on the Session's own
context and buffer with one length cell allocated up front. It is a class (compiled by mypyc,
setup.py) rather than a closure so that the compiled legs call it directly. It keeps the
Session referenced: the Session owns the libsrtp context and frees it. native() hands the
same function and context to the C relay path (webrtc/_relaypath.c).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pylibsrtp
from pylibsrtp import Session

# cffi's compiled binding has no stubs: its objects are Any to mypy, which is what they are.
from pylibsrtp._binding import ffi, lib  # type: ignore[import-not-found]

# What pylibsrtp reserves for the authentication tag (+ MKI, + SRTCP index) when protecting.
_RTP_TRAILER = pylibsrtp.SRTP_MAX_TRAILER_LEN
_RTCP_TRAILER = pylibsrtp.SRTP_MAX_SRTCP_TRAILER_LEN


class SrtpTransform:
    """One libsrtp operation (protect, unprotect, for RTP or RTCP) on one Session."""

    def __init__(self, session: Session, function_name: str, trailer: int) -> None:
        try:
            self._context: Any = session._srtp[0]
            self._cdata: Any = session._cdata
            self._buffer: Any = session._buffer
        except AttributeError as error:  # pylibsrtp's internals moved: update this module
            raise RuntimeError(f"unsupported pylibsrtp version: {error}") from error
        self._session = session
        self._function: Callable[..., int] = getattr(lib, function_name)
        self._function_address = int(ffi.cast("uintptr_t", ffi.addressof(lib, function_name)))
        self._room: int = len(self._cdata) - trailer
        self._length: Any = ffi.new("int *")

    def native(self) -> tuple[int, int, int, Session]:
        """libsrtp's function and context addresses, the largest packet apply() takes, and the
        Session that keeps the context alive while C code uses it."""
        context_address = int(ffi.cast("uintptr_t", self._context))
        return (self._function_address, context_address, self._room, self._session)

    def apply(self, packet: bytes) -> bytes:
        size = len(packet)
        if size > self._room:
            raise pylibsrtp.Error(f"packet of {size} bytes too long for SRTP")
        buffer = self._buffer
        length = self._length
        buffer[0:size] = packet
        length[0] = size
        status: int = self._function(self._context, self._cdata, length)
        if status:
            raise pylibsrtp.Error(pylibsrtp.ERRORS[status])
        result: bytes = buffer[0:length[0]]
        return result


@dataclass
class SrtpSessions:
    """libsrtp contexts for one DTLS association: protect outgoing, unprotect incoming."""

    outbound: Session
    inbound: Session
    profile: str
    protect: SrtpTransform = field(init=False)
    protect_rtcp: SrtpTransform = field(init=False)
    unprotect: SrtpTransform = field(init=False)
    unprotect_rtcp: SrtpTransform = field(init=False)

    def __post_init__(self) -> None:
        self.protect = protect(self.outbound)
        self.protect_rtcp = protect_rtcp(self.outbound)
        self.unprotect = unprotect(self.inbound)
        self.unprotect_rtcp = unprotect_rtcp(self.inbound)


def protect(session: Session) -> SrtpTransform:
    return SrtpTransform(session, "srtp_protect", _RTP_TRAILER)


def protect_rtcp(session: Session) -> SrtpTransform:
    return SrtpTransform(session, "srtp_protect_rtcp", _RTCP_TRAILER)


def unprotect(session: Session) -> SrtpTransform:
    return SrtpTransform(session, "srtp_unprotect", 0)


def unprotect_rtcp(session: Session) -> SrtpTransform:
    return SrtpTransform(session, "srtp_unprotect_rtcp", 0)
