"""Parsing and serialising whole SIP messages (RFC 3261 §7, §20, §25): header forms, limits,
editing, responses; hypothesis round trips and robustness against arbitrary bytes."""

from __future__ import annotations

import contextlib
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sip.errors import SipError
from sip.message import Limits, Message, Request, Response, parse_message
from tests.sip.test_uri import sip_uris

REGISTER = (
    b"REGISTER sip:example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bKnashds7\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: <sip:alice@example.com>\r\n"
    b'From: "Alice" <sip:alice@example.com>;tag=456248\r\n'
    b"Call-ID: 843817637684230@998sdasdh09\r\n"
    b"CSeq: 1826 REGISTER\r\n"
    b"Contact: <sip:alice@df7jal23ls0d.invalid;transport=ws>;expires=600\r\n"
    b"Expires: 7200\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def test_register_fields() -> None:
    message = parse_message(REGISTER)
    message.validate()
    assert isinstance(message, Request)
    assert (message.method, message.uri) == ("REGISTER", "sip:example.com")
    assert message.top_via.transport == "WSS"
    assert message.top_via.branch == "z9hG4bKnashds7"
    assert message.from_.display == "Alice" and message.from_.tag == "456248"
    assert str(message.to.uri) == "sip:alice@example.com" and message.to.tag is None
    assert message.call_id == "843817637684230@998sdasdh09"
    assert (message.cseq.number, message.cseq.method) == (1826, "REGISTER")
    assert message.contacts[0].params == {"expires": "600"}
    assert (message.max_forwards, message.expires) == (70, 7200)
    assert message.body == b""


def test_serialisation_is_byte_exact_for_a_canonical_message() -> None:
    assert parse_message(REGISTER).to_bytes() == REGISTER


def test_compact_forms_and_case_insensitive_names() -> None:
    message = parse_message(
        b"OPTIONS sip:bob@example.com SIP/2.0\r\n"
        b"v: SIP/2.0/UDP h.example.com;branch=z9hG4bK1\r\n"
        b"f: <sip:alice@example.com>;tag=1\r\nt: <sip:bob@example.com>\r\n"
        b"i: abc@h\r\nCSEQ: 2 OPTIONS\r\nmax-FORWARDS: 5\r\nk: timer, path\r\n"
        b"m: <sip:alice@h.example.com>\r\nc: text/plain\r\nl: 5\r\n\r\nhello"
    )
    message.validate()
    assert message.get("Call-ID") == message.get("i") == message.get("CALL-ID") == "abc@h"
    assert message.option_tags("Supported") == {"timer", "path"}
    assert message.content_type == "text/plain"
    assert message.body == b"hello"
    wire = message.to_bytes()
    assert b"\r\nCall-ID: abc@h\r\n" in wire and b"\r\nVia: SIP/2.0/UDP" in wire
    assert wire.endswith(b"\r\nContent-Length: 5\r\n\r\nhello")


def test_comma_separated_and_repeated_list_headers() -> None:
    message = parse_message(
        b"INVITE sip:bob@example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP a.example.com;branch=z9hG4bK1, SIP/2.0/TCP b.example.com"
        b";branch=z9hG4bK2\r\n"
        b"Via: SIP/2.0/TLS c.example.com;branch=z9hG4bK3\r\n"
        b'Contact: "Doe, John" <sip:j@a.example.com>, <sip:j@b.example.com>;q=0.1\r\n'
        b"Route: <sip:p1.example.com;lr>,<sip:p2.example.com;lr>\r\n"
        b"Date: Sat, 13 Nov 2010 23:29:00 GMT\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    assert [via.host for via in message.vias] == ["a.example.com", "b.example.com", "c.example.com"]
    assert [contact.display for contact in message.contacts] == ["Doe, John", None]
    assert [route.uri.host for route in message.name_addrs("Route")] == [
        "p1.example.com", "p2.example.com"
    ]
    assert message.get_all("Date") == ["Sat, 13 Nov 2010 23:29:00 GMT"]
    assert message.remove_first_value("Via") == "SIP/2.0/UDP a.example.com;branch=z9hG4bK1"
    assert message.top_via.host == "b.example.com"


def test_top_via_of_a_comma_joined_row_without_parsing_the_rest() -> None:
    message = parse_message(
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a.example.com;branch=z9hG4bK1, garbage\r\n\r\n"
    )
    assert message.top_via.host == "a.example.com"
    with pytest.raises(SipError):
        message.vias  # noqa: B018 - the whole list is still checked when asked for
    empty = parse_message(b"SIP/2.0 200 OK\r\nVia: ,\r\n\r\n")
    with pytest.raises(SipError) as caught:
        empty.top_via  # noqa: B018
    assert caught.value.status == 400


def test_header_folding_is_unfolded() -> None:
    message = parse_message(
        b"OPTIONS sip:b@example.com SIP/2.0\r\nSubject: I know you're there,\r\n"
        b"     pick up the phone\r\n\t and talk to me!\r\nContent-Length: 0\r\n\r\n"
    )
    assert message.get("Subject") == "I know you're there, pick up the phone and talk to me!"


def test_header_values_keep_characters_that_are_not_sip_whitespace() -> None:
    message = parse_message(
        "OPTIONS sip:b@example.com SIP/2.0\r\nSubject: \u00a0hi\x1c\r\nX-A: 0\r\n \x85\r\n"
        "X-B: 1\r\n \t\r\nContent-Length: 0\r\n\r\n".encode()
    )
    assert message.get("Subject") == "\u00a0hi\x1c"
    assert message.get("X-A") == "0 \x85"
    assert message.get("X-B") == "1"


def test_bare_lf_messages_are_tolerated() -> None:
    message = parse_message(
        b"OPTIONS sip:b@example.com SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\n"
        b"Call-ID: x\r\nContent-Length: 2\n\nhi"
    )
    assert message.call_id == "x" and message.body == b"hi"


def test_response_fields_and_serialisation() -> None:
    wire = (
        b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
        b"To: <sip:b@example.com>;tag=t\r\nFrom: <sip:a@example.com>;tag=f\r\n"
        b"Call-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    message = parse_message(wire)
    message.validate()
    assert isinstance(message, Response)
    assert (message.status, message.reason) == (180, "Ringing")
    assert message.to_bytes() == wire


def test_content_length_shorter_than_the_datagram_truncates_the_body() -> None:
    message = parse_message(b"MESSAGE sip:b@h SIP/2.0\r\nContent-Length: 3\r\n\r\nabcdef")
    assert message.body == b"abc"


def test_request_response_copies_the_rfc3261_headers() -> None:
    request = parse_message(
        b"INVITE sip:bob@example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP a;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP b;branch=z9hG4bK2\r\n"
        b"From: <sip:a@example.com>;tag=f\r\nTo: <sip:bob@example.com>\r\nCall-ID: c\r\n"
        b"CSeq: 7 INVITE\r\nTimestamp: 54\r\nMax-Forwards: 70\r\nContact: <sip:a@a>\r\n"
        b"Content-Type: application/sdp\r\nContent-Length: 3\r\n\r\nv=0"
    )
    assert isinstance(request, Request)
    trying = request.response(100)
    assert (trying.status, trying.reason) == (100, "Trying")
    assert trying.get("Timestamp") == "54" and trying.to.tag is None
    ringing = request.response(180, to_tag="xyz")
    assert ringing.to.tag == "xyz" and not ringing.has("Timestamp")
    assert [via.host for via in ringing.vias] == ["a", "b"]
    assert not ringing.has("Contact") and ringing.body == b""
    assert parse_message(ringing.to_bytes()).cseq.number == 7
    busy = request.response(486, "Busy Here Now")
    assert busy.reason == "Busy Here Now"


@pytest.mark.parametrize(
    ("to", "tag"),
    [
        ("<sip:bob@example.com>", "new"),
        ("sip:bob@example.com", "new"),
        ('"Tag=Me" <sip:bob@example.com>', "new"),
        ("<sip:bob@example.com;tag=uri-param>", "new"),
        ("sip:bob@example.com ;   tag    = old", "old"),
        ("<sip:bob@example.com>;TAG=old", "old"),
    ],
)
def test_response_to_tag_is_added_only_when_the_to_has_none(to: str, tag: str) -> None:
    request = parse_message(
        f"BYE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\n"
        f"From: <sip:a@example.com>;tag=f\r\nTo: {to}\r\nCall-ID: c\r\nCSeq: 2 BYE\r\n"
        f"Content-Length: 0\r\n\r\n".encode()
    )
    assert isinstance(request, Request)
    response = parse_message(request.response(200, to_tag="new").to_bytes())
    assert response.to.tag == tag
    assert response.to.uri == request.to.uri


def test_editing_headers() -> None:
    message = parse_message(REGISTER)
    message.prepend("Via", "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp")
    assert message.top_via.host == "proxy.example.com"
    message.set("Max-Forwards", "69")
    assert message.max_forwards == 69
    message.add("Record-Route", "<sip:proxy.example.com;lr>")
    assert message.name_addrs("Record-Route")[0].uri.is_loose_router
    message.remove("Expires")
    assert message.expires is None
    message.set_body(b"hello", "text/plain")
    reparsed = parse_message(message.to_bytes())
    assert reparsed.body == b"hello" and reparsed.content_type == "text/plain"
    assert reparsed.get("Content-Length") == "5"


def test_copy_does_not_share_header_rows() -> None:
    message = parse_message(REGISTER)
    assert isinstance(message, Request)
    clone = message.copy()
    clone.set("Call-ID", "other")
    assert message.call_id == "843817637684230@998sdasdh09"
    assert clone.call_id == "other"


@pytest.mark.parametrize(
    ("wire", "status", "reason_words"),
    [
        (b"", 400, "start line"),
        (b"\r\n\r\n", 400, "start line"),
        (b"INVITE sip:a@b\r\n\r\n", 400, "request line"),
        (b"INVITE sip:a@b SIP/3.0\r\n\r\n", 505, "Version"),
        (b"SIP/1.0 200 OK\r\n\r\n", 505, "Version"),
        (b"SIP/2.0 20 OK\r\n\r\n", 400, "status code"),
        (b"SIP/2.0 700 OK\r\n\r\n", 400, "status code"),
        (b"IN<VITE sip:a@b SIP/2.0\r\n\r\n", 400, "method"),
        ("INV\u00cdTE sip:a@b SIP/2.0\r\n\r\n".encode(), 400, "method"),
        ("INVITE\u00b2 sip:a@b SIP/2.0\r\n\r\n".encode(), 400, "method"),
        (b"OPTIONS sip:a@b SIP/2.0\r\n continuation first\r\n\r\n", 400, "continuation"),
        (b"OPTIONS sip:a@b SIP/2.0\r\nNo colon here\r\n\r\n", 400, "header"),
        (b"OPTIONS sip:a@b SIP/2.0\r\n: empty name\r\n\r\n", 400, "header name"),
        (b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: x\r\n\r\n", 400, "Content-Length"),
        (b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 10\r\n\r\nshort", 400, "Content-Length"),
        (b"OPTIONS sip:a@b SIP/2.0\r\nl: " + b"1" * 5000 + b"\r\n\r\n", 400, "Content-Length"),
        ("OPTIONS sip:a@b SIP/2.0\r\nContent-Length: \u00b2\r\n\r\n".encode(), 400, "Content"),
        ("SIP/2.0 \u00b2\u00b2\u00b2 OK\r\n\r\n".encode(), 400, "status code"),
        (b"OPTIONS sip:a@b SIP/2.0\r\nFo\x00o: 1\r\n\r\n", 400, "header name"),
        (b"OPTIONS sip:a@b SIP/2.0\r\nl: 0\r\nl: 0\r\n\r\n", 400, "more than one"),
    ],
)
def test_malformed_messages(wire: bytes, status: int, reason_words: str) -> None:
    with pytest.raises(SipError) as caught:
        parse_message(wire)
    assert caught.value.status == status
    assert reason_words.lower() in caught.value.reason.lower()


def test_size_limits_are_configurable() -> None:
    limits = Limits(max_message_size=200, max_headers=3, max_header_length=40)
    with pytest.raises(SipError) as caught:
        parse_message(REGISTER, limits)
    assert caught.value.status == 513
    few = b"OPTIONS sip:a@b SIP/2.0\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n"
    with pytest.raises(SipError) as caught:
        parse_message(few, limits)
    assert caught.value.status == 513 and "headers" in caught.value.reason
    assert len(parse_message(few, Limits(max_headers=4)).header_rows()) == 4
    long_line = b"OPTIONS sip:a@b SIP/2.0\r\nSubject: " + b"x" * 50 + b"\r\n\r\n"
    with pytest.raises(SipError) as caught:
        parse_message(long_line, limits)
    assert caught.value.status == 513


@pytest.mark.parametrize(
    ("header", "accessor", "status"),
    [
        (b"Max-Forwards: 256", "max_forwards", 400),
        (b"Max-Forwards: -1", "max_forwards", 400),
        (b"Expires: soon", "expires", 400),
        (b"CSeq: 1", "cseq", 400),
        (b"From: <sip:a@b", "from_", 400),
        (b"Via: SIP/2.0/UDP", "vias", 400),
        ("Via: SIP/2.0/UDP h:\u00b2".encode(), "vias", 400),
        ("CSeq: \u00b2 INVITE".encode(), "cseq", 400),
        (b"CSeq: " + b"9" * 5000 + b" INVITE", "cseq", 400),
        (b"Expires: " + b"9" * 5000, "expires", None),
        (b"Max-Forwards: 0070", "max_forwards", None),
    ],
)
def test_structured_header_values(header: bytes, accessor: str, status: int | None) -> None:
    """status None: accepted (Expires saturates at 2**32-1, Max-Forwards ignores leading zeros)."""
    message = parse_message(b"OPTIONS sip:a@b SIP/2.0\r\n" + header + b"\r\n\r\n")
    if status is None:
        assert getattr(message, accessor) in (2**32 - 1, 70)
        return
    with pytest.raises(SipError) as caught:
        getattr(message, accessor)
    assert caught.value.status == status


@pytest.mark.parametrize("missing", [b"Via", b"Call-ID", b"From", b"To", b"CSeq"])
def test_validate_requires_transaction_headers(missing: bytes) -> None:
    lines = [line for line in REGISTER.split(b"\r\n") if not line.startswith(missing + b":")]
    message = parse_message(b"\r\n".join(lines))
    with pytest.raises(SipError) as caught:
        message.validate()
    assert caught.value.status == 400
    assert "Missing" in caught.value.reason


# --- hypothesis: generated valid messages round-trip ----------------------------------------

TOKEN = string.ascii_letters + string.digits + "-.!%*_+`'~"
tokens = st.text(TOKEN, min_size=1, max_size=10)
methods = st.sampled_from(["INVITE", "ACK", "BYE", "CANCEL", "REGISTER", "OPTIONS", "MESSAGE"])
display_names = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x24FF, exclude_characters="\x7f"),
    min_size=1, max_size=16,
)
header_names = st.sampled_from(
    [
        ("Subject", "s"), ("User-Agent", None), ("Supported", "k"), ("Allow", None),
        ("X-Custom-Header", None), ("Organization", None), ("Date", None),
    ]
)
free_text = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x2FFF), min_size=1, max_size=20
)
bodies = st.binary(max_size=300)


def fold(value: str, draw: st.DrawFn) -> str:
    """Fold at some spaces: the unfolded value is the same (RFC 3261 §7.3.1)."""
    words = value.split(" ")
    return "".join(
        word if index == 0 else draw(st.sampled_from([" ", "\r\n ", "\r\n\t"])) + word
        for index, word in enumerate(words)
    )


def cased(name: str, draw: st.DrawFn) -> str:
    return "".join(char.upper() if draw(st.booleans()) else char.lower() for char in name)


def name_addr_text(draw: st.DrawFn, uri: str, tag: str | None) -> str:
    display = draw(st.none() | display_names)
    prefix = ""
    if display is not None:
        escaped = display.replace("\\", "\\\\").replace('"', '\\"')
        prefix = f'"{escaped}" '
    params = f";tag={tag}" if tag else ""
    return f"{prefix}<{uri}>{params}"


@st.composite
def valid_messages(draw: st.DrawFn) -> bytes:
    is_request = draw(st.booleans())
    method = draw(methods)
    if is_request:
        uri = draw(sip_uris(with_headers=False))
        start = f"{method} {uri} SIP/2.0"
    else:
        status = draw(st.integers(100, 699))
        start = f"SIP/2.0 {status} {draw(st.sampled_from(['OK', 'Ringing', 'Not Found', '']))}"
    headers: list[str] = []
    via_values = [
        f"SIP/2.0/{draw(st.sampled_from(['UDP', 'TCP', 'WSS']))} "
        f"{draw(st.sampled_from(['h.example.com', '192.0.2.1:5070', '[::1]']))}"
        f";branch=z9hG4bK{draw(tokens)}"
        for _ in range(draw(st.integers(1, 3)))
    ]
    if draw(st.booleans()):
        headers.append(f"{cased('via', draw)}: {', '.join(via_values)}")
    else:
        headers += [f"{draw(st.sampled_from(['Via', 'v']))}: {value}" for value in via_values]
    from_uri = draw(sip_uris(with_headers=False))
    headers.append(f"From: {name_addr_text(draw, from_uri, draw(tokens))}")
    headers.append(f"t: {name_addr_text(draw, 'sip:bob@example.com', draw(st.none() | tokens))}")
    headers.append(f"{draw(st.sampled_from(['Call-ID', 'i', 'call-id']))}: {draw(tokens)}@host")
    headers.append(f"CSeq: {draw(st.integers(0, 2**31 - 1))} {method}")
    headers.append(f"Max-Forwards: {draw(st.integers(0, 255))}")
    for _ in range(draw(st.integers(0, 2))):
        contact = name_addr_text(draw, draw(sip_uris()), None)
        headers.append(f"{draw(st.sampled_from(['Contact', 'm']))}: {contact};expires=60")
    for _ in range(draw(st.integers(0, 3))):
        full, compact = draw(header_names)
        name = compact if compact and draw(st.booleans()) else cased(full, draw)
        value = " ".join(draw(st.lists(free_text, min_size=1, max_size=4)))
        headers.append(f"{name}{draw(st.sampled_from(['', ' ', chr(9)]))}: {fold(value, draw)}")
    headers = draw(st.permutations(headers))
    body = draw(bodies)
    headers.append(f"{draw(st.sampled_from(['Content-Length', 'l']))}: {len(body)}")
    return (start + "\r\n" + "\r\n".join(headers) + "\r\n\r\n").encode() + body


def structure(message: Request | Response) -> tuple[Any, ...]:
    """Everything a parsed message means, in comparable form."""
    start = (
        (message.method, message.ruri)
        if isinstance(message, Request)
        else (message.status, message.reason)
    )
    rows = [(name, value) for name, value in message.header_rows() if name != "Content-Length"]
    return (
        start, rows, message.body, message.vias, message.from_, message.to, message.call_id,
        message.cseq, message.contacts, message.max_forwards,
    )


@given(valid_messages())
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_generated_messages_round_trip(wire: bytes) -> None:
    first = parse_message(wire)
    first.validate()
    second = parse_message(first.to_bytes())
    second.validate()
    assert structure(second) == structure(first)
    assert second.to_bytes() == first.to_bytes()


# --- hypothesis: nothing but SipError from bytes off the wire -------------------------------


def exercise(message: Message) -> None:
    """Every accessor a gateway may call on a received message."""
    message.validate()
    for accessor in (
        "vias", "top_via", "call_id", "cseq", "from_", "to", "contacts", "max_forwards",
        "expires", "content_type",
    ):
        with contextlib.suppress(SipError):
            getattr(message, accessor)
    for name in ("Route", "Record-Route", "Path"):
        with contextlib.suppress(SipError):
            for name_addr in message.name_addrs(name):
                _ = name_addr.uri
    for name_addr in message.contacts:
        with contextlib.suppress(SipError):
            _ = (name_addr.uri.address_of_record, str(name_addr))
    _ = (message.option_tags("Require"), message.get_all("Allow"), message.to_bytes())
    _ = (str(message.top_via), message.top_via.sent_by, message.from_.uri, message.to.uri)
    if isinstance(message, Request):
        _ = (str(message.ruri), message.response(200, to_tag="x").to_bytes())


def assert_only_sip_errors(wire: bytes) -> None:
    try:
        message = parse_message(wire)
        exercise(message)
    except SipError as error:
        assert 400 <= error.status <= 699
        assert error.reason


MUTATIONS = st.sampled_from(
    [b"\r\n", b"\r\n ", b";", b",", b'"', b"\\", b"<", b">", b":", b"%", b"@", b"?", b"[", b"]",
     b"\x00", b"\xff", b"\xc3", b"9" * 30, b"\xc2\xb2", b" ", b"=", b"/", b"sips:", b";;", b"*"]
)


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    wire = bytearray(draw(valid_messages()))
    # Mostly past the start line: a broken start line stops parsing before any header is read.
    past_start_line = draw(st.sampled_from([True] * 9 + [False]))
    first_header = wire.find(b"\r\n") + 2 if past_start_line else 0
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(first_header, max(first_header, len(wire))))
        action = draw(st.sampled_from(["insert", "delete", "replace", "truncate"]))
        if action == "insert":
            wire[position:position] = draw(MUTATIONS)
        elif action == "delete":
            del wire[position : position + draw(st.integers(1, 8))]
        elif action == "replace" and position < len(wire):
            wire[position] = draw(st.integers(0, 255))
        elif action == "truncate":
            del wire[position:]
    return bytes(wire)


@given(st.binary(max_size=400))
@settings(max_examples=500)
def test_random_bytes_raise_only_sip_errors(wire: bytes) -> None:
    assert_only_sip_errors(wire)


@given(mutated_messages())
@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_messages_raise_only_sip_errors(wire: bytes) -> None:
    assert_only_sip_errors(wire)
