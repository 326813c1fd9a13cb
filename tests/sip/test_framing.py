"""Content-Length framing of SIP over a byte stream (RFC 3261 §18.3) with RFC 5626 keep-alives."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sip.errors import SipError
from sip.framing import KEEPALIVE_PING, PING, PONG, KeepAlivePing, StreamFramer
from sip.message import Limits, parse_message
from tests.sip.test_message import REGISTER, valid_messages

INVITE = (
    b"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n"
    b"l: 12\r\n\r\nv=0\r\n\r\n\r\nxyz"
)


def feed_all(framer: StreamFramer, chunks: list[bytes]) -> list[bytes | KeepAlivePing]:
    return [item for chunk in chunks for item in framer.feed(chunk)]


def test_one_message_in_one_segment() -> None:
    framer = StreamFramer()
    assert feed_all(framer, [REGISTER]) == [REGISTER]
    assert framer.pending == 0


def test_byte_by_byte() -> None:
    framer = StreamFramer()
    stream = REGISTER + INVITE
    assert feed_all(framer, [stream[i : i + 1] for i in range(len(stream))]) == [REGISTER, INVITE]


def test_pipelined_messages_and_a_body_holding_blank_lines() -> None:
    framer = StreamFramer()
    items = feed_all(framer, [INVITE + REGISTER + INVITE[:30]])
    assert items == [INVITE, REGISTER]
    assert isinstance(items[0], bytes)
    assert parse_message(items[0]).body == b"v=0\r\n\r\n\r\nxyz"
    assert framer.pending == 30
    assert feed_all(framer, [INVITE[30:]]) == [INVITE]


def test_keepalive_ping_and_pong() -> None:
    framer = StreamFramer()
    assert feed_all(framer, [PING]) == [KEEPALIVE_PING]
    assert feed_all(framer, [PONG + REGISTER]) == [REGISTER]
    assert feed_all(framer, [REGISTER + PING + PING]) == [REGISTER, KEEPALIVE_PING, KEEPALIVE_PING]


def test_ping_split_across_segments_is_still_a_ping() -> None:
    framer = StreamFramer()
    assert feed_all(framer, [b"\r\n", b"\r\n"]) == [KEEPALIVE_PING]
    assert feed_all(framer, [b"\r", b"\n\r", b"\n"]) == [KEEPALIVE_PING]
    assert framer.pending == 0


def test_pong_before_a_message_in_a_later_segment_is_dropped() -> None:
    framer = StreamFramer()
    assert feed_all(framer, [PONG]) == []
    assert feed_all(framer, [REGISTER]) == [REGISTER]


def test_folded_line_reading_like_a_compact_length_is_not_a_second_length() -> None:
    # Found by the split property below: " L" continues x-custom-header's value.
    message = (b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h\r\nx-custom-header: 0\r\n L\r\n"
               b"Content-Length: 3\r\n\r\nabc")
    assert feed_all(StreamFramer(), [message]) == [message]


def test_missing_content_length_on_a_stream_is_400() -> None:
    framer = StreamFramer()
    with pytest.raises(SipError) as caught:
        feed_all(framer, [b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h\r\n\r\n"])
    assert caught.value.status == 400


@pytest.mark.parametrize("value", [b"-1", b"ten", b"1" * 5000, "²".encode()])
def test_malformed_content_length_is_400(value: bytes) -> None:
    with pytest.raises(SipError) as caught:
        feed_all(StreamFramer(), [b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: " + value + PING])
    assert caught.value.status in (400, 513)


def test_oversized_messages_are_513() -> None:
    limits = Limits(max_message_size=300)
    with pytest.raises(SipError) as caught:
        feed_all(StreamFramer(limits), [b"OPTIONS sip:a@b SIP/2.0\r\n" + b"X: y\r\n" * 60])
    assert caught.value.status == 513
    with pytest.raises(SipError) as caught:
        feed_all(StreamFramer(limits), [b"OPTIONS sip:a@b SIP/2.0\r\nl: 100000\r\n\r\n"])
    assert caught.value.status == 513


# --- property: any split of a pipelined stream yields exactly its messages -------------------

KEEPALIVES = (PING, PONG)


def unambiguous(items: list[bytes]) -> bool:
    """A pong next to another keep-alive is the same octets as a ping: no framer can tell."""
    return not any(
        PONG in (first, second) and first in KEEPALIVES and second in KEEPALIVES
        for first, second in zip(items, items[1:], strict=False)
    )


stream_items = st.lists(
    st.one_of(valid_messages(), st.just(PING), st.just(PONG)), min_size=1, max_size=6
).filter(unambiguous)


@given(items=stream_items, data=st.data())
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_any_split_of_a_pipelined_stream_yields_its_messages(
    items: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    bounds = zip([0, *cuts], [*cuts, len(stream)], strict=True)
    chunks = [stream[start:end] for start, end in bounds]
    expected = [KEEPALIVE_PING if item == PING else item for item in items if item != PONG]
    framer = StreamFramer()
    assert feed_all(framer, chunks) == expected
    assert framer.pending in (0, len(PONG))
