"""SIP, SIPS and tel URIs: parsing, serialising, comparison (RFC 3261 §19.1, RFC 3966)."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sip.errors import SipError
from sip.uri import SipUri


def test_full_sip_uri_parts() -> None:
    uri = SipUri.parse("sips:alice:secret@Example.COM:5061;transport=TCP;lr;maddr=10.0.0.1?x=1&y=2")
    assert (uri.scheme, uri.user, uri.password) == ("sips", "alice", "secret")
    assert (uri.host, uri.port) == ("Example.COM", 5061)
    assert uri.params == {"transport": "TCP", "lr": None, "maddr": "10.0.0.1"}
    assert uri.headers == "x=1&y=2"
    assert uri.transport == "tcp" and uri.secure and uri.is_loose_router
    assert str(uri) == "sips:alice:secret@Example.COM:5061;transport=TCP;lr;maddr=10.0.0.1?x=1&y=2"


def test_host_only_uri() -> None:
    uri = SipUri.parse("sip:proxy.example.com")
    assert (uri.user, uri.host, uri.port, uri.params, uri.headers) == (
        None, "proxy.example.com", None, {}, None
    )
    assert uri.address_of_record == "sip:proxy.example.com"


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("sip:bob@[2001:db8::1]", "2001:db8::1", None),
        ("sip:bob@[2001:db8::1]:5070;transport=udp", "2001:db8::1", 5070),
        ("sip:[::ffff:192.0.2.1]:5060", "::ffff:192.0.2.1", 5060),
        ("sip:192.0.2.4:5080", "192.0.2.4", 5080),
    ],
)
def test_ip_hosts(text: str, host: str, port: int | None) -> None:
    uri = SipUri.parse(text)
    assert (uri.host, uri.port) == (host, port)
    assert str(uri) == text


def test_tel_uri() -> None:
    uri = SipUri.parse("tel:+1-201-555-0123;phone-context=example.com")
    assert (uri.scheme, uri.user, uri.host) == ("tel", "+1-201-555-0123", "")
    assert uri.params == {"phone-context": "example.com"}
    assert uri.address_of_record == "tel:+1-201-555-0123"
    assert str(uri) == "tel:+1-201-555-0123;phone-context=example.com"


def test_scheme_is_case_insensitive() -> None:
    assert SipUri.parse("SIP:alice@example.com").scheme == "sip"


def test_address_of_record_unescapes_user_and_lowers_host() -> None:
    uri = SipUri.parse("sips:%61lice@AtLanTa.CoM:5061;transport=tls")
    assert uri.address_of_record == "sip:alice@atlanta.com"


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("sip:", 400),
        ("sip:@example.com", 400),
        ("sip:alice@", 400),
        ("sip:alice@exa mple.com", 400),
        ("sip:alice@example.com:0", 400),
        ("sip:alice@example.com:65536", 400),
        ("sip:alice@example.com:50x", 400),
        ("sip:alice@[2001:db8::1", 400),
        ("sip:alice@[zz::1]", 400),
        ("sip:alice@[::1]5060", 400),
        ("sip:alice@example.com;;lr", 400),
        ("sip:alice@example.com;", 400),
        ("<sip:alice@example.com>", 400),
        ("alice", 400),
        ("http://example.com", 416),
        ("im:alice@example.com", 416),
        ("tel:", 400),
    ],
)
def test_malformed_uris_are_refused(text: str, status: int) -> None:
    with pytest.raises(SipError) as caught:
        SipUri.parse(text)
    assert caught.value.status == status


# RFC 3261 §19.1.4 comparison examples (the header component is out of equivalent()'s scope).
@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
        ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on"),
        (
            "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
            "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
        ),
    ],
)
def test_rfc3261_equivalent_uris(left: str, right: str) -> None:
    assert SipUri.parse(left).equivalent(SipUri.parse(right))
    assert SipUri.parse(right).equivalent(SipUri.parse(left))


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
        ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
        ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;security=off"),
        ("sip:bob@biloxi.com", "sips:bob@biloxi.com"),
        ("sip:bob:pw@biloxi.com", "sip:bob@biloxi.com"),
    ],
)
def test_rfc3261_different_uris(left: str, right: str) -> None:
    assert not SipUri.parse(left).equivalent(SipUri.parse(right))
    assert not SipUri.parse(right).equivalent(SipUri.parse(left))


def test_copy_is_independent() -> None:
    uri = SipUri.parse("sip:alice@example.com;lr")
    clone = uri.copy()
    clone.params["transport"] = "tcp"
    clone.host = "other.example.com"
    assert str(uri) == "sip:alice@example.com;lr"
    assert str(clone) == "sip:alice@other.example.com;lr;transport=tcp"


# --- property: generated URIs survive str() and parse() --------------------------------------

ALNUM = string.ascii_letters + string.digits
UNRESERVED = ALNUM + "-_.!~*'()"
escaped = st.integers(0, 255).map(lambda octet: f"%{octet:02X}")
user_parts = st.lists(
    st.one_of(st.sampled_from(UNRESERVED + "&=+$,;?/"), escaped), min_size=1, max_size=20
).map("".join)
password_parts = st.lists(
    st.one_of(st.sampled_from(UNRESERVED + "&=+$,"), escaped), max_size=12
).map("".join)
labels = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=10)
domains = st.lists(labels, min_size=1, max_size=4).map(".".join)
ipv4s = st.tuples(*[st.integers(0, 255)] * 4).map(lambda parts: ".".join(map(str, parts)))
ipv6s = st.lists(st.integers(0, 0xFFFF), min_size=8, max_size=8).map(
    lambda groups: ":".join(f"{group:x}" for group in groups)
)
param_chars = st.lists(
    st.one_of(st.sampled_from(UNRESERVED + "[]/:&+$"), escaped), min_size=1, max_size=12
).map("".join)
param_names = st.text(string.ascii_lowercase + string.digits + "-.", min_size=1, max_size=8)
header_component = st.lists(
    st.tuples(
        st.text(ALNUM, min_size=1, max_size=8),
        st.lists(st.one_of(st.sampled_from(UNRESERVED + "[]/?:+$"), escaped), max_size=10).map(
            "".join
        ),
    ),
    min_size=1,
    max_size=3,
).map(lambda pairs: "&".join(f"{name}={value}" for name, value in pairs))


@st.composite
def sip_uris(draw: st.DrawFn, *, with_headers: bool = True) -> str:
    text = draw(st.sampled_from(["sip:", "sips:"]))
    user = draw(st.none() | user_parts)
    if user is not None:
        text += user
        password = draw(st.none() | password_parts)
        if password:
            text += ":" + password
        text += "@"
    text += draw(st.one_of(domains, ipv4s, ipv6s.map(lambda host: f"[{host}]")))
    port = draw(st.none() | st.integers(1, 65535))
    if port is not None:
        text += f":{port}"
    params = draw(st.dictionaries(param_names, st.none() | param_chars, max_size=4))
    for name, value in params.items():
        text += f";{name}" if value is None else f";{name}={value}"
    headers = draw(st.none() | header_component) if with_headers else None
    if headers is not None:
        text += "?" + headers
    return text


@given(sip_uris())
def test_generated_uris_round_trip_exactly(text: str) -> None:
    uri = SipUri.parse(text)
    assert str(uri) == text
    again = SipUri.parse(str(uri))
    assert again == uri
    assert again.equivalent(uri)


@given(st.text(max_size=80))
def test_arbitrary_text_raises_only_sip_errors(text: str) -> None:
    try:
        uri = SipUri.parse(text)
    except SipError:
        return
    SipUri.parse(str(uri))
    _ = (uri.address_of_record, uri.user_decoded, uri.transport)
