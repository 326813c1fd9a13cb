"""Structured header values: name-addr, Via, CSeq and header names (RFC 3261 §20, §25)."""

from __future__ import annotations

import contextlib
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sip.errors import SipError
from sip.headers import CSeq, NameAddr, Via, canonical_name

# --- name-addr / addr-spec -------------------------------------------------------------------


def test_name_addr_with_quoted_display_and_params() -> None:
    value = NameAddr.parse(
        '"Alice \\"Al\\" Smith" <sip:alice@example.com;transport=ws>;tag=a1;q=0.5'
    )
    assert value.display == 'Alice "Al" Smith'
    assert value.uri_text == "sip:alice@example.com;transport=ws"
    assert value.uri.params == {"transport": "ws"}
    assert value.params == {"tag": "a1", "q": "0.5"}
    assert value.tag == "a1"


def test_addr_spec_params_belong_to_the_header() -> None:
    value = NameAddr.parse("sip:bob@example.com;tag=b2;expires=60")
    assert value.display is None
    assert value.uri_text == "sip:bob@example.com"
    assert value.params == {"tag": "b2", "expires": "60"}


def test_token_display_name_keeps_its_inner_spaces() -> None:
    value = NameAddr.parse("Bob  The  Builder <sip:bob@example.com>")
    assert value.display == "Bob  The  Builder"


def test_display_name_cannot_inject_header_lines() -> None:
    value = NameAddr("sip:a@example.com", 'Eve\r\nRoute: <sip:evil.example.com>\n"')
    assert "\r" not in str(value) and "\n" not in str(value)
    assert NameAddr.parse(str(value)).display == 'Eve  Route: <sip:evil.example.com> "'


def test_contact_wildcard() -> None:
    value = NameAddr.parse(" * ")
    assert value.is_wildcard and str(value) == "*"


def test_quoted_parameter_value_with_separators() -> None:
    text = '<sip:r8s1@h.invalid;transport=ws>;+sip.instance="<urn:uuid:1;2,3>";reg-id=1'
    value = NameAddr.parse(text)
    assert value.params == {"+sip.instance": "<urn:uuid:1;2,3>", "reg-id": "1"}
    assert str(value) == text


def test_escaped_quotes_inside_quoted_parameter_values() -> None:
    value = NameAddr.parse('"A \\"B\\"" <sip:a@example.com>;p="x\\";y";q=1')
    assert value.display == 'A "B"'
    assert value.params == {"p": 'x";y', "q": "1"}
    assert NameAddr.parse(str(value)).params == value.params
    with pytest.raises(SipError) as caught:
        NameAddr.parse('<sip:a@example.com>;p="x\\";y')
    assert caught.value.status == 400


def test_uri_setter_reserialises() -> None:
    value = NameAddr.parse('"A" <sip:a@example.com>;tag=1')
    uri = value.uri
    uri.host = "b.example.com"
    value.uri = uri
    assert str(value) == '"A" <sip:a@b.example.com>;tag=1'


@pytest.mark.parametrize(
    "text",
    [
        '"unterminated <sip:a@example.com>',
        '"Joe" sip:a@example.com',
        "Bell, Alexander <sip:a@example.com>",
        '"a" "b" <sip:a@example.com>',
        "A\"B <sip:a@example.com>",
        "< sip:a@example.com>",
        "<sip:a@example.com >",
        "<sip:a@example.com",
        "sip:a@example.com?subject=x",
        "sip:a@example.com, sip:b@example.com",
        "<sip:a@example.com> garbage",
        "<sip:a@example.com>;;tag=1",
        "<sip:a@example.com>;tag=1;",
        "<>",
        "<nocolon>",
        "",
    ],
)
def test_malformed_name_addrs_are_400(text: str) -> None:
    with pytest.raises(SipError) as caught:
        NameAddr.parse(text, "To")
    assert caught.value.status == 400


# --- Via ---------------------------------------------------------------------------------------


def test_via_with_received_rport_and_maddr() -> None:
    via = Via.parse(
        "SIP/2.0/UDP pc33.example.com:5066;branch=z9hG4bK776asdhds;received=192.0.2.1"
        ";rport=5067;maddr=224.2.0.1;ttl=16"
    )
    assert (via.transport, via.host, via.port) == ("UDP", "pc33.example.com", 5066)
    assert via.branch == "z9hG4bK776asdhds"
    assert via.params == {
        "branch": "z9hG4bK776asdhds", "received": "192.0.2.1", "rport": "5067",
        "maddr": "224.2.0.1", "ttl": "16",
    }
    assert via.sent_by == "pc33.example.com:5066"


def test_via_empty_rport_is_a_flag() -> None:
    via = Via.parse("SIP/2.0/WSS df7jal23ls0d.invalid;rport;branch=z9hG4bKabc")
    assert via.transport == "WSS"
    assert via.params == {"rport": None, "branch": "z9hG4bKabc"}
    assert str(via) == "SIP/2.0/WSS df7jal23ls0d.invalid;rport;branch=z9hG4bKabc"


def test_via_ipv6_sent_by_and_received() -> None:
    via = Via.parse("SIP/2.0/TCP [2001:db8::9]:5070;branch=z9hG4bK1;received=2001:db8::9")
    assert (via.host, via.port) == ("2001:db8::9", 5070)
    assert via.sent_by == "[2001:db8::9]:5070"
    assert str(via) == "SIP/2.0/TCP [2001:db8::9]:5070;branch=z9hG4bK1;received=2001:db8::9"


def test_via_set_received_on_ipv6_serialises_without_quotes() -> None:
    via = Via.parse("SIP/2.0/UDP host.example.com;branch=z9hG4bK1")
    via.params["received"] = "::1"
    assert str(via) == "SIP/2.0/UDP host.example.com;branch=z9hG4bK1;received=::1"


def test_via_tolerates_lws_around_slashes() -> None:
    via = Via.parse("SIP / 2.0 / tcp  host.example.com ; branch = z9hG4bK2")
    assert (via.transport, via.host, via.branch) == ("TCP", "host.example.com", "z9hG4bK2")


@pytest.mark.parametrize(
    "text",
    [
        "SIP/3.0/UDP host",
        "HTTP/2.0/UDP host",
        "SIP/2.0/UDP",
        "SIP/2.0 host",
        "SIP/2.0/UDP host:port",
        "SIP/2.0/UDP host;;branch=1",
        "SIP/2.0/UDP host;",
        "SIP/2.0/UDP [::1",
        ";",
    ],
)
def test_malformed_vias_are_400(text: str) -> None:
    with pytest.raises(SipError) as caught:
        Via.parse(text)
    assert caught.value.status == 400


# --- CSeq -------------------------------------------------------------------------------------


def test_cseq() -> None:
    cseq = CSeq.parse(" 4711   INVITE ")
    assert (cseq.number, cseq.method) == (4711, "INVITE")
    assert str(cseq) == "4711 INVITE"


@pytest.mark.parametrize(
    "text", ["INVITE", "1", "x INVITE", "-1 INVITE", "1 INVITE ACK", "2147483648 INVITE", ""]
)
def test_malformed_cseq_is_400(text: str) -> None:
    with pytest.raises(SipError) as caught:
        CSeq.parse(text)
    assert caught.value.status == 400


def test_cseq_upper_bound_is_inclusive() -> None:
    assert CSeq.parse("2147483647 BYE").number == 2**31 - 1


# --- header names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("v", "Via"), ("i", "Call-ID"), ("m", "Contact"), ("f", "From"), ("t", "To"),
        ("l", "Content-Length"), ("c", "Content-Type"), ("k", "Supported"), ("s", "Subject"),
        ("e", "Content-Encoding"), ("o", "Event"), ("r", "Refer-To"), ("b", "Referred-By"),
        ("u", "Allow-Events"), ("x", "Session-Expires"), ("CALL-ID", "Call-ID"),
        ("cseq", "CSeq"), ("www-authenticate", "WWW-Authenticate"),
        ("X-Custom", "X-Custom"),
    ],
)
def test_canonical_names(name: str, canonical: str) -> None:
    assert canonical_name(name) == canonical


# --- properties ---------------------------------------------------------------------------

TOKEN = string.ascii_letters + string.digits + "-.!%*_+`'~"
tokens = st.text(TOKEN, min_size=1, max_size=12)
displays = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_characters="\x7f"), max_size=20
)
param_values = st.none() | tokens | displays.map(lambda text: text.replace("\\", ""))


@given(
    display=st.none() | displays.filter(bool),
    user=tokens,
    params=st.dictionaries(tokens.map(str.lower), param_values, max_size=4),
)
def test_name_addr_round_trips(
    display: str | None, user: str, params: dict[str, str | None]
) -> None:
    value = NameAddr(f"sip:{user}@example.com", display, params)
    again = NameAddr.parse(str(value), "Contact")
    assert again.display == display
    assert again.uri_text == value.uri_text
    assert again.params == params


@given(
    transport=st.sampled_from(["UDP", "TCP", "TLS", "WS", "WSS", "SCTP"]),
    host=st.sampled_from(["host.example.com", "192.0.2.1", "2001:db8::1", "::1"]),
    port=st.none() | st.integers(1, 65535),
    branch=tokens,
    received=st.none() | st.sampled_from(["192.0.2.7", "2001:db8::7"]),
    rport=st.none() | st.integers(1, 65535),
)
def test_via_round_trips(
    transport: str, host: str, port: int | None, branch: str, received: str | None,
    rport: int | None,
) -> None:
    params: dict[str, str | None] = {"branch": branch}
    if received is not None:
        params["received"] = received
    params["rport"] = str(rport) if rport is not None else None
    via = Via(transport, host, port, params)
    assert Via.parse(str(via)) == via


@given(st.text(max_size=60))
def test_arbitrary_header_values_raise_only_sip_errors(text: str) -> None:
    parsers = (lambda: NameAddr.parse(text).uri, lambda: Via.parse(text), lambda: CSeq.parse(text))
    for parse in parsers:
        with contextlib.suppress(SipError):
            parse()
