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


RTCP_SR = 200
RTCP_RR = 201
_REPORT_BLOCK = 24
_JITTER_OFFSET = 12  # within a report block: SSRC, loss (4), highest sequence, then jitter


def reported_jitter(compound: bytes) -> int | None:
    """The largest interarrival jitter (RFC 3550 §6.4.1, in RTP timestamp units) in the SR and
    RR report blocks of a compound packet; None without any. Malformed parts end the reading."""
    largest: int | None = None
    offset = 0
    while offset + _HEADER <= len(compound):
        length = (int.from_bytes(compound[offset + 2:offset + 4], "big") + 1) * 4
        kind = compound[offset + 1]
        if offset + length > len(compound):
            break
        if kind in (RTCP_SR, RTCP_RR):
            blocks = offset + (28 if kind == RTCP_SR else 8)
            for index in range(compound[offset] & 0x1F):
                start = blocks + index * _REPORT_BLOCK + _JITTER_OFFSET
                if start + 4 > offset + length:
                    break
                jitter = int.from_bytes(compound[start:start + 4], "big")
                largest = jitter if largest is None else max(largest, jitter)
        offset += length
    return largest
