"""Structured header values: name-addr (From/To/Contact/Route…), Via and CSeq."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Final

from .errors import SipError
from .grammar import (
    find_unquoted,
    format_params,
    is_token,
    parse_decimal,
    parse_params,
    quote,
    quoted_string_end,
    unquote,
)
from .record import Record
from .uri import PARSE_CACHE_SIZE, SipUri, format_host, split_hostport

COMPACT_FORMS = {
    "i": "Call-ID", "m": "Contact", "e": "Content-Encoding", "l": "Content-Length",
    "c": "Content-Type", "f": "From", "s": "Subject", "k": "Supported", "t": "To", "v": "Via",
    "o": "Event", "r": "Refer-To", "b": "Referred-By", "a": "Accept-Contact",
    "u": "Allow-Events", "x": "Session-Expires", "j": "Reject-Contact",
    "d": "Request-Disposition", "y": "Identity",
}
_KNOWN = (
    "Accept", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow", "Allow-Events",
    "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact",
    "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length",
    "Content-Type", "CSeq", "Date", "Error-Info", "Event", "Expires", "Flow-Timer", "From",
    "In-Reply-To", "Max-Forwards", "Min-Expires", "Min-SE", "MIME-Version", "Organization",
    "Path", "Priority", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require", "RAck",
    "Reason", "Record-Route", "Refer-To", "Referred-By", "Reply-To", "Require", "Retry-After",
    "Route", "RSeq", "Server", "Session-Expires", "SIP-ETag", "SIP-If-Match", "Subject",
    "Subscription-State", "Supported", "Timestamp", "To", "Unsupported", "User-Agent", "Via",
    "Warning", "WWW-Authenticate", "P-Asserted-Identity", "Privacy", "Identity",
)
CANONICAL_NAMES: Final = {name.lower(): name for name in _KNOWN}
for _short, _long in COMPACT_FORMS.items():
    CANONICAL_NAMES[_short] = _long

# Headers whose values may be comma-joined lists (RFC 3261 §7.3.1); all others are single values
# and may legitimately contain commas (dates, quoted display names, auth parameters).
LIST_HEADERS: Final = frozenset(
    name.lower()
    for name in (
        "Via", "Contact", "Route", "Record-Route", "Path", "Allow", "Supported", "Require",
        "Proxy-Require", "Unsupported", "Accept", "Accept-Encoding", "Accept-Language",
        "Allow-Events", "Content-Encoding", "Content-Language", "In-Reply-To", "Warning",
        "Alert-Info", "Call-Info", "Error-Info", "Reason", "P-Asserted-Identity",
    )
)


# What nearly every Via looks like (no spaces or comments inside, a host name or IPv4 address):
# one match instead of the general path's three scans. Anything else takes the general path.
_VIA_COMMON: Final = re.compile(
    r"SIP/2\.0/([A-Za-z]+) ([A-Za-z0-9._-]+)(?::([0-9]{1,5}))?(?:;(.*))?\Z", re.S
)
# `SIP / 2.0 / UDP` with spaces around the slashes is legal (RFC 4475 §3.1.1.1).
_VIA_PROTOCOL: Final = re.compile(
    r"\s*([A-Za-z]+)\s*/\s*([0-9.]+)\s*/\s*([A-Za-z0-9-]+)\s+(\S.*)", re.S
)


def canonical_name(name: str) -> str:
    return CANONICAL_NAMES.get(name.lower(), name)


@dataclass(slots=True)
class NameAddr:
    """`"Display" <uri>;params`, `uri;params` or the Contact wildcard `*`."""

    uri_text: str
    display: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    _uri: SipUri | None = None

    @classmethod
    def parse(cls, text: str, header: str = "header") -> NameAddr:
        """Parsed once per distinct text: the result is a shared read-only view (sip.message)."""
        return _parse_name_addr(text, header)

    @classmethod
    def _parse_uncached(cls, text: str, header: str) -> NameAddr:
        text = text.strip()
        if text == "*":
            return cls("*")
        open_at = find_unquoted(text, "<")
        if open_at >= 0:
            close_at = text.find(">", open_at)
            if close_at < 0:
                raise SipError(400, f"Unterminated <> in {header}")
            display_text = text[:open_at].strip()
            display = _display_name(display_text, header) if display_text else None
            uri_text = text[open_at + 1 : close_at]
            if uri_text != uri_text.strip():
                # RFC 4475 badaspec: LAQUOT/RAQUOT admit no whitespace inside the brackets.
                raise SipError(400, f"Malformed {header}: whitespace inside <>")
            rest = text[close_at + 1 :].strip()
        else:
            if text.startswith('"'):
                problem = "quoted display name without <>"
                if quoted_string_end(text) < 0:
                    problem = "unterminated quoted display name"
                raise SipError(400, f"Malformed {header}: {problem}")
            display = None
            uri_text, has_params, rest = text.partition(";")
            uri_text = uri_text.strip()
            rest = ";" + rest if has_params else ""
            if " " in uri_text or "," in uri_text or "?" in uri_text:
                # RFC 3261 §20: a URI with a comma, "?" or ";" must be enclosed in <>.
                raise SipError(400, f"Malformed {header}: URI with spaces, ',' or '?' needs <>")
        if not uri_text or ":" not in uri_text:
            raise SipError(400, f"Malformed URI in {header}")
        if rest and not rest.startswith(";"):
            raise SipError(400, f"Garbage after URI in {header}")
        return cls(uri_text, display, parse_params(rest[1:], header) if rest else {})

    @property
    def uri(self) -> SipUri:
        if self._uri is None:
            self._uri = SipUri.parse(self.uri_text)
        return self._uri

    @uri.setter
    def uri(self, value: SipUri) -> None:
        self._uri = value
        self.uri_text = str(value)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    @property
    def is_wildcard(self) -> bool:
        return self.uri_text == "*"

    def __str__(self) -> str:
        if self.is_wildcard:
            return "*"
        uri_text = str(self._uri) if self._uri is not None else self.uri_text
        display = f"{quote(self.display)} " if self.display else ""
        return f"{display}<{uri_text}>{format_params(self.params)}"


# A dialog repeats its From and To in every request and response, and a client repeats its Contact
# at each refresh: most name-addrs were already seen. Errors are not cached (each raises anew).
@functools.lru_cache(maxsize=PARSE_CACHE_SIZE)
def _parse_name_addr(text: str, header: str) -> NameAddr:
    return NameAddr._parse_uncached(text, header)


def _display_name(text: str, header: str) -> str:
    """display-name = *(token LWS) / quoted-string (RFC 3261 §25.1); RFC 4475 baddn, quotbal."""
    if text.startswith('"'):
        if quoted_string_end(text) != len(text) - 1:
            raise SipError(400, f"Malformed quoted display name in {header}")
        return unquote(text)
    if not all(is_token(word) for word in text.split()):
        raise SipError(400, f"Malformed display name in {header}: quote it")
    return text


class Via:
    """A Via value; parsed for every message, hence a compiled class with an explicit __init__
    (a dataclass's generated one stays interpreted under mypyc and costs several times more).
    Unlike the immutable Records, params is stamped in place (received, rport)."""

    __slots__ = ("transport", "host", "port", "params")

    def __init__(
        self, transport: str, host: str, port: int | None = None,
        params: dict[str, str | None] | None = None,
    ) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self.params: dict[str, str | None] = params if params is not None else {}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Via):
            return NotImplemented
        return (self.transport, self.host, self.port, self.params) == (
            other.transport, other.host, other.port, other.params
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it replaced

    def __repr__(self) -> str:
        return (f"Via(transport={self.transport!r}, host={self.host!r}, port={self.port!r}, "
                f"params={self.params!r})")

    @classmethod
    def parse(cls, text: str) -> Via:
        common = _VIA_COMMON.match(text)
        if common is not None:
            transport, host, port_text, params = common.groups()
            port = int(port_text) if port_text else None
            if port is None or 0 < port <= 65535:
                return cls(transport.upper(), host, port,
                           parse_params(params, "Via") if params is not None else {})
        match = _VIA_PROTOCOL.match(text)
        if match is None:
            raise SipError(400, f"Malformed Via {text.strip()[:60]!r}")
        name, version, transport, rest = match.groups()
        if name.upper() != "SIP" or version != "2.0":
            raise SipError(400, f"Malformed Via protocol {name}/{version}")
        sent_by, has_params, params = rest.partition(";")
        host, port = split_hostport(sent_by.strip().replace(" ", ""), "Via")
        params_dict = parse_params(params, "Via") if has_params else {}
        return cls(transport.upper(), host, port, params_dict)

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def sent_by(self) -> str:
        return f"{format_host(self.host)}:{self.port}" if self.port else format_host(self.host)

    def __str__(self) -> str:
        return f"SIP/2.0/{self.transport} {self.sent_by}{format_params(self.params)}"


_CSEQ_FIELDS = ("number", "method")


class CSeq(Record):
    __slots__ = _CSEQ_FIELDS
    FIELDS = _CSEQ_FIELDS

    def __init__(self, number: int, method: str) -> None:
        self.number: Final = number
        self.method: Final = method

    @classmethod
    def parse(cls, text: str) -> CSeq:
        number, _, method = text.strip().partition(" ")
        method = method.strip()
        if not method or " " in method:
            raise SipError(400, f"Malformed CSeq {text[:40]!r}")
        value = parse_decimal(number, "CSeq number")
        if value >= 2**31:
            raise SipError(400, "CSeq number out of range")
        return cls(value, method)

    def __str__(self) -> str:
        return f"{self.number} {self.method}"
