"""libsrtp's protect/unprotect for the per-packet path, called straight through pylibsrtp's
cffi binding.

pylibsrtp's Session methods allocate an `int *` with cffi, check the argument's type and call
a checking helper on every packet; that wrapper cost as much CPU as libsrtp's own crypto
(bench/media_path.py, see the commit). These closures do the same calls on the Session's
own context and buffer with one length cell allocated up front. The Session object stays
referenced by the closure: it owns the libsrtp context and frees it.
"""

from __future__ import annotations

from collections.abc import Callable

import pylibsrtp
from pylibsrtp import Session
from pylibsrtp._binding import ffi, lib

Transform = Callable[[bytes], bytes]
# What pylibsrtp reserves for the authentication tag (+ MKI, + SRTCP index) when protecting.
_RTP_TRAILER = pylibsrtp.SRTP_MAX_TRAILER_LEN
_RTCP_TRAILER = pylibsrtp.SRTP_MAX_SRTCP_TRAILER_LEN


def protect(session: Session) -> Transform:
    return _transform(session, lib.srtp_protect, _RTP_TRAILER)


def protect_rtcp(session: Session) -> Transform:
    return _transform(session, lib.srtp_protect_rtcp, _RTCP_TRAILER)


def unprotect(session: Session) -> Transform:
    return _transform(session, lib.srtp_unprotect, 0)


def unprotect_rtcp(session: Session) -> Transform:
    return _transform(session, lib.srtp_unprotect_rtcp, 0)


def _transform(session: Session, function: Callable[..., int], trailer: int) -> Transform:
    try:
        context = session._srtp[0]
        cdata = session._cdata
        buffer = session._buffer
    except AttributeError as error:  # pylibsrtp's internals moved: update this module
        raise RuntimeError(f"unsupported pylibsrtp version: {error}") from error
    room = len(cdata) - trailer
    length = ffi.new("int *")

    def transform(packet: bytes, _owner: Session = session) -> bytes:
        size = len(packet)
        if size > room:
            raise pylibsrtp.Error(f"packet of {size} bytes too long for SRTP")
        buffer[0:size] = packet
        length[0] = size
        status = function(context, cdata, length)
        if status:
            raise pylibsrtp.Error(pylibsrtp.ERRORS[status])
        return buffer[0:length[0]]

    return transform
