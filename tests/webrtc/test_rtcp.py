"""BYE parts are removed from compound RTCP crossing the anchor; everything else is kept."""

from __future__ import annotations

import struct

from webrtc.rtcp import without_bye

RECEIVER_REPORT = struct.pack("!BBHI", 0x81, 201, 7, 1111) + struct.pack("!6I", 2222, 0, 5, 0,
                                                                          0, 0)
SDES = struct.pack("!BBHI", 0x81, 202, 3, 1111) + bytes([1, 2]) + b"ab" + bytes(4)
BYE = struct.pack("!BBHI", 0x81, 203, 1, 1111)


def test_bye_is_removed_from_a_compound() -> None:
    assert without_bye(RECEIVER_REPORT + SDES + BYE) == RECEIVER_REPORT + SDES


def test_compound_without_bye_is_unchanged() -> None:
    assert without_bye(RECEIVER_REPORT + SDES) == RECEIVER_REPORT + SDES


def test_lone_bye_is_dropped() -> None:
    assert without_bye(BYE) is None


def test_malformed_compound_passes_unchanged() -> None:
    truncated = RECEIVER_REPORT[:-3]
    assert without_bye(truncated) == truncated
    assert without_bye(RECEIVER_REPORT + b"\x81") == RECEIVER_REPORT + b"\x81"
