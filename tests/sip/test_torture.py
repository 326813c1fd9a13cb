"""RFC 4475 SIP torture tests: valid messages parse to the right values, invalid ones are refused
with the status the RFC expects, and semantic cases expose what the application decides on."""

from __future__ import annotations

import pytest

from sip.errors import SipError
from sip.framing import StreamFramer
from sip.message import Request, Response, parse_message
from tests.sip.torture import generate
from tests.sip.torture.generate import load


def parse_valid(name: str) -> Request | Response:
    message = parse_message(load(name))
    message.validate()
    return message


def request(name: str) -> Request:
    message = parse_valid(name)
    assert isinstance(message, Request)
    return message


def refused(name: str, *, touch: tuple[str, ...] = ()) -> SipError:
    """The SipError raised by parsing, validating and reading the named accessors."""
    with pytest.raises(SipError) as caught:
        message = parse_message(load(name))
        message.validate()
        for accessor in touch:
            value = getattr(message, accessor)
            if callable(value):
                value()
    return caught.value


def test_files_on_disk_match_the_generator() -> None:
    for name, data in generate.MESSAGES.items():
        assert load(name) == data, f"{name}.sip is stale: run python -m tests.sip.torture.generate"


# --- §3.1.1 valid messages -------------------------------------------------------------------


def test_wsinv_short_tortuous_invite() -> None:
    message = request("wsinv")
    assert message.method == "INVITE"
    assert message.ruri.user == "vivekg"
    assert message.ruri.host == "chair-dnrc.example.com"
    assert message.ruri.params == {"unknownparam": None}
    assert str(message.to.uri) == "sip:vivekg@chair-dnrc.example.com"
    assert message.to.tag == "1918181833n"
    assert message.from_.display == 'J Rosenberg \\"'
    assert message.from_.tag == "98asjd8"
    assert message.max_forwards == 68
    assert message.call_id == "wsinv.ndaksdj@192.0.2.1"
    assert (message.cseq.number, message.cseq.method) == (9, "INVITE")
    assert [(via.transport, via.host, via.branch) for via in message.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert message.get("Subject") == ""
    assert message.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert message.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    route = message.name_addrs("Route")[0]
    assert route.uri.params == {"lr": None, "unknownwith": "value", "unknown-no-value": None}
    (contact,) = message.contacts
    assert contact.display == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert message.content_type == "application/sdp"
    assert len(message.body) == 150


def test_intmeth_wide_range_of_valid_characters() -> None:
    message = request("intmeth")
    assert message.method == generate.INTMETH_METHOD
    assert message.ruri.user == generate.INTMETH_USER
    assert message.ruri.password == generate.INTMETH_PASSWORD
    assert message.ruri.host == "example.com"
    assert message.top_via.branch == "z9hG4bK-.!%66*_+`'~"
    assert message.to.display == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert message.to.uri.user == generate.INTMETH_USER
    assert message.from_.display == "token1~` token2'+_ token3*%!.-"
    assert message.from_.params["fromparam''~+*_!.-%"] == "работающий"
    assert message.from_.tag == "_token~1'+`*%!-."
    assert message.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert message.cseq.method == generate.INTMETH_METHOD
    assert message.max_forwards == 255
    assert message.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"


def test_esc01_valid_percent_escaping() -> None:
    message = request("esc01")
    assert message.ruri.user_decoded == "sips:user@example.com"
    assert message.ruri.host == "example.net"
    assert message.to.uri.user_decoded == "user"
    assert message.from_.uri.user_decoded == "I have spaces"
    assert message.call_id == "esc01.239409asdfakjkn23onasd0-3234"
    assert message.content_type == "application/sdp"
    (contact,) = message.contacts
    assert contact.uri.user_decoded == "caller"
    assert list(contact.uri.params.values()) == [None, "v%61lue%25%34%31"]
    assert contact.uri.equivalent(parse_message(load("esc01")).contacts[0].uri)


def test_escnull_escaped_nulls_in_uris() -> None:
    message = request("escnull")
    assert message.to.uri.user_decoded == "null-\x00-null"
    assert message.from_.uri.user_decoded == "null-\x00-null"
    assert [contact.uri.user_decoded for contact in message.contacts] == ["\x00", "\x00\x00"]
    assert message.body == b""


def test_esc02_percent_that_is_not_an_escape() -> None:
    message = request("esc02")
    assert message.method == "RE%47IST%45R"
    assert message.cseq.method == "RE%47IST%45R"
    assert message.to.display == "%Z%45"
    assert message.top_via.params == {"rport": None, "branch": "z9hG4bK209%fzsnel234"}
    # C%6Fntact is an unknown header, not a third Contact.
    assert [contact.uri.host for contact in message.contacts] == [
        "host1.example.com", "host3.example.com"
    ]
    assert message.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


def test_lwsdisp_no_space_between_display_name_and_laquot() -> None:
    message = request("lwsdisp")
    assert message.from_.display == "caller"
    assert message.from_.uri.user == "caller"
    assert message.from_.tag == "323"


def test_longreq_long_values_in_header_fields() -> None:
    message = request("longreq")
    assert message.to.display == generate.LONGREQ_DISPLAY
    assert message.to.uri.port == 6000
    assert message.to.uri.params["unknownparam1"] == generate.LONGREQ_URI_PARAM_VALUE
    assert message.from_.uri.user == generate.LONGREQ_CALLER
    assert message.from_.tag == generate.LONGREQ_TAG
    assert message.call_id == generate.LONGREQ_CALL_ID
    assert message.get(generate.LONGREQ_HEADER_NAME.upper()) is not None
    assert len(message.vias) == generate.LONGREQ_VIA_COUNT
    assert message.top_via.branch == generate.LONGREQ_BRANCH
    assert [via.host for via in message.vias[-2:]] == ["sip2.example.com", "sip1.example.com"]
    assert message.contacts[0].uri.user == generate.LONGREQ_CALLER
    assert len(message.body) == 150


def test_dblreq_extra_octets_after_the_body_are_ignored_on_a_datagram() -> None:
    message = request("dblreq")
    assert message.method == "REGISTER"
    assert message.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"
    assert message.body == b""


def test_semiuri_semicolons_in_the_user_part() -> None:
    message = request("semiuri")
    assert message.ruri.user == "user;par=u%40example.net"
    assert message.ruri.host == "example.com"
    assert message.ruri.params == {}
    assert message.get_all("Accept") == [
        "application/sdp", "application/pkcs7-mime", "multipart/mixed", "multipart/signed",
        "message/sip", "message/sipfrag",
    ]


def test_transports_varied_and_unknown_transports() -> None:
    message = request("transports")
    assert [via.transport for via in message.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    assert [via.host for via in message.vias] == [f"t{n}.example.com" for n in range(1, 6)]
    assert message.call_id == "transports.kijh4akdnaqjkwendsasfdj"


def test_mpart01_multipart_body_with_binary_octets_is_kept_intact() -> None:
    message = request("mpart01")
    assert message.method == "MESSAGE"
    assert message.body == generate.MPART01_BODY
    assert generate.MPART01_BINARY in message.body
    assert message.content_type == "multipart/mixed"
    assert message.top_via.params["rport"] is None
    assert message.name_addrs("Route")[0].uri.port == 5080


def test_unreason_unusual_reason_phrase() -> None:
    message = parse_valid("unreason")
    assert isinstance(message, Response)
    assert message.status == 200
    assert message.reason == generate.UNREASON_PHRASE
    assert message.to.tag == "2229"
    assert len(message.body) == 154


def test_noreason_empty_reason_phrase() -> None:
    message = parse_valid("noreason")
    assert isinstance(message, Response)
    assert (message.status, message.reason) == (100, "")
    assert message.to.tag == "902jndnke3"


# --- §3.1.2 invalid messages -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "touch", "status", "reason_words"),
    [
        # Empty parameters (";;") in From and Contact, an empty Via value.
        ("badinv01", ("contacts",), 400, "parameter"),
        ("clerr", (), 400, "Content-Length"),
        ("ncl", (), 400, "Content-Length"),
        ("scalar02", (), 400, "CSeq"),
        ("scalarlg", (), 400, "CSeq"),
        ("quotbal", (), 400, "quot"),
        # <> around the Request-URI is no URI at all: 400, not 416 for a "<sip" scheme.
        ("ltgtruri", (), 400, "URI"),
        ("lwsruri", (), 400, "request line"),
        ("lwsstart", (), 400, "request line"),
        ("trws", (), 400, "request line"),
        # RFC 3261 §19.1.1: headers are not allowed in a Request-URI; we refuse, not strip.
        ("escruri", (), 400, "Request-URI"),
        ("regbadct", ("contacts",), 400, "<>"),
        ("badaspec", (), 400, "<>"),
        ("baddn", (), 400, "display name"),
        ("badvers", (), 505, "Version"),
        ("mismatch01", (), 400, "CSeq method"),
        ("mismatch02", (), 400, "CSeq method"),
        ("bigcode", (), 400, "status code"),
    ],
)
def test_invalid_message_is_refused(
    name: str, touch: tuple[str, ...], status: int, reason_words: str
) -> None:
    error = refused(name, touch=touch)
    assert error.status == status, error.reason
    assert reason_words.lower() in error.reason.lower()


def test_badinv01_each_broken_header_is_refused_on_its_own() -> None:
    message = parse_message(load("badinv01"))
    for accessor in ("from_", "vias", "contacts"):
        with pytest.raises(SipError) as caught:
            getattr(message, accessor)
        assert caught.value.status == 400


def test_scalar02_overlarge_max_forwards_is_refused_on_its_own() -> None:
    message = parse_message(load("scalar02"))
    with pytest.raises(SipError) as caught:
        message.max_forwards  # noqa: B018 - the accessor is the check
    assert caught.value.status == 400
    # RFC 3261 §20.19: an Expires beyond 2**32-1 is read as 2**32-1, not refused.
    assert message.expires == 2**32 - 1


def test_baddate_is_forwarded_with_the_date_untouched() -> None:
    # RFC 4475 §3.1.2.12: a proxy forwards it; the Date header is not the parser's concern.
    message = request("baddate")
    assert message.get("Date") == "Fri, 01 Jan 2010 16:00:00 EST"
    assert b"Date: Fri, 01 Jan 2010 16:00:00 EST\r\n" in message.to_bytes()


# --- §3.2 / §3.3 / §3.4 semantics: the parser exposes what the application decides on -------


def test_badbranch_exposes_a_branch_that_is_only_the_magic_cookie() -> None:
    message = request("badbranch")
    assert message.top_via.branch == "z9hG4bK"


def test_insuf_missing_required_headers() -> None:
    error = refused("insuf")
    assert error.status == 400
    assert "Missing" in error.reason


@pytest.mark.parametrize("name", ["unkscm", "novelsc"])
def test_unknown_request_uri_scheme_is_416(name: str) -> None:
    message = parse_message(load(name))
    with pytest.raises(SipError) as caught:
        message.validate()
    assert caught.value.status == 416


def test_unksm2_unknown_schemes_in_headers_are_decided_by_the_application() -> None:
    message = request("unksm2")
    assert message.to.uri_text == "isbn:2983792873"
    assert message.from_.uri_text == "http://www.example.com"
    assert message.contacts[0].uri_text == "name:John_Smith"
    for name_addr in (message.to, message.from_, message.contacts[0]):
        with pytest.raises(SipError) as caught:
            name_addr.uri  # noqa: B018 - the accessor is the check
        assert caught.value.status == 416


def test_bext01_require_and_proxy_require_option_tags() -> None:
    message = request("bext01")
    assert message.option_tags("Require") == {"nothingsupportsthis", "nothingsupportsthiseither"}
    assert message.option_tags("Proxy-Require") == {
        "noproxiessupportthis", "nordoanyproxiessupportthis"
    }
    assert message.top_via.transport == "TLS"


def test_invut_unknown_content_type_is_exposed_with_its_body() -> None:
    message = request("invut")
    assert message.content_type == "application/unknownformat"
    assert message.body == generate.INVUT_BODY.replace("\n", "\r\n").encode()


def test_regaut01_unknown_authorization_scheme_is_kept_raw() -> None:
    message = request("regaut01")
    assert message.get("Authorization") == "NoOneKnowsThisScheme opaque-data=here"


def test_multi01_repeated_single_value_headers_are_refused() -> None:
    error = refused("multi01")
    assert error.status == 400
    assert "more than one" in error.reason.lower()


def test_mcl01_multiple_content_lengths_are_refused() -> None:
    error = refused("mcl01")
    assert error.status == 400
    assert "Content-Length" in error.reason


def test_mcl01_multiple_content_lengths_cannot_be_framed_on_a_stream() -> None:
    with pytest.raises(SipError) as caught:
        list(StreamFramer().feed(load("mcl01")))
    assert caught.value.status == 400


def test_bcast_exposes_the_broadcast_via() -> None:
    message = parse_valid("bcast")
    assert [via.host for via in message.vias] == ["192.0.2.198", "255.255.255.255"]


def test_zeromf_max_forwards_zero() -> None:
    assert request("zeromf").max_forwards == 0


def test_cparam01_parameter_without_brackets_belongs_to_the_contact() -> None:
    (contact,) = request("cparam01").contacts
    assert contact.params == {"unknownparam": None}
    assert contact.uri.params == {}
    assert contact.uri.user == "+19725552222"


def test_cparam02_parameter_inside_brackets_belongs_to_the_uri() -> None:
    (contact,) = request("cparam02").contacts
    assert contact.params == {}
    assert contact.uri.params == {"unknownparam": None}


def test_regescrt_escaped_header_in_a_contact_uri() -> None:
    (contact,) = request("regescrt").contacts
    assert contact.uri.headers == "Route=%3Csip:sip.example.com%3E"
    assert contact.uri.host == "example.com"


def test_sdp01_accept_is_exposed() -> None:
    message = request("sdp01")
    assert message.get_all("Accept") == ["text/nobodyKnowsThis"]
    assert message.content_type == "application/sdp"


def test_inv2543_rfc2543_syntax_is_accepted() -> None:
    message = request("inv2543")
    assert message.top_via.branch is None
    assert message.from_.tag is None and message.to.tag is None
    assert message.max_forwards is None
    assert message.from_.uri.params == {"user": "phone"}
    # Without <>, ";user=phone" is a header parameter of To, not a URI parameter.
    assert message.to.params == {"user": "phone"}
    assert message.to.uri.params == {}
    assert message.name_addrs("Record-Route")[0].uri.params["maddr"] == "ss1.example.com"
    # No Content-Length on a datagram: the body is the rest of the packet.
    assert message.body == generate.INV2543_BODY.replace("\n", "\r\n").encode()


VALID = [
    "wsinv", "intmeth", "esc01", "escnull", "esc02", "lwsdisp", "longreq", "dblreq", "semiuri",
    "transports", "mpart01", "unreason", "noreason", "badbranch", "bcast", "zeromf", "cparam01",
    "cparam02", "regescrt", "sdp01", "inv2543", "bext01", "invut", "regaut01", "baddate",
]


@pytest.mark.parametrize("name", VALID)
def test_valid_messages_survive_serialisation(name: str) -> None:
    first = parse_valid(name)
    second = parse_message(first.to_bytes())
    second.validate()
    assert second.header_rows()[:-1] == [
        row for row in first.header_rows() if row[0] != "Content-Length"
    ]
    assert second.body == first.body
    assert (second.vias, second.from_, second.to, second.cseq, second.contacts) == (
        first.vias, first.from_, first.to, first.cseq, first.contacts
    )
    assert second.to_bytes() == first.to_bytes()
