"""The frame header the gateway writes itself (RFC 6455 §5.2: server frames are not masked)."""

from __future__ import annotations

import pytest

from gateway.websocket import _frame_header


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        (0, b"\x81\x00"),
        (125, b"\x81\x7d"),  # 7-bit length
        (126, b"\x81\x7e\x00\x7e"),  # 126: a 16-bit length follows
        (65535, b"\x81\x7e\xff\xff"),
        (65536, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),  # 127: a 64-bit length follows
    ],
)
def test_payload_length_takes_the_shortest_encoding(length: int, expected: bytes) -> None:
    assert _frame_header(0x81, length) == expected


def test_binary_opcode_is_kept() -> None:
    assert _frame_header(0x82, 300)[:1] == b"\x82"
