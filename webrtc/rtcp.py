"""RTCP adjustments at the anchor."""

from __future__ import annotations

RTCP_BYE = 203
_HEADER = 4


def without_bye(compound: bytes) -> bytes | None:
    """The compound RTCP packet minus its BYE parts; None when nothing else is left.

    The anchor's legs end with the SIP dialog, not with a BYE from one side: phones such as
    pjsua send BYE when a re-INVITE rebuilds their stream and then carry on with the same
    SSRC, and a browser that got the BYE stops decoding that SSRC for good (aiortc does).
    A malformed compound is passed on unchanged; the receiver will judge it.
    """
    kept = []
    offset = 0
    while offset + _HEADER <= len(compound):
        length = (int.from_bytes(compound[offset + 2:offset + 4], "big") + 1) * 4
        if offset + length > len(compound):
            return compound
        if compound[offset + 1] != RTCP_BYE:
            kept.append(compound[offset:offset + length])
        offset += length
    if offset != len(compound):
        return compound
    if not kept:
        return None
    return b"".join(kept)
