"""SIP requests and responses: lazy parsing, structured accessors and serialisation (RFC 3261 §7).

Parsing only splits the start line and header lines; structured values (Via, name-addrs, CSeq…)
are parsed on first access and cached, because a proxy reads a handful of headers and forwards
the rest untouched.

Parsed values are read-only views: change a header through set/add/prepend/remove or
replace_top_via (copies share the parsed values until one of them changes that header).
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from typing import Any, Final

from .errors import SipError
from .grammar import is_token, parse_decimal, split_top_level
from .headers import CANONICAL_NAMES, LIST_HEADERS, CSeq, NameAddr, Via
from .status import reason_phrase
from .uri import SipUri

SIP_VERSION: Final = "SIP/2.0"


@dataclass(frozen=True, slots=True)
class Limits:
    max_message_size: int = 65_535
    max_headers: int = 128
    max_header_length: int = 8_192


DEFAULT_LIMITS = Limits()


class Message:
    """Header rows (key, name, value) in wire order; key is the lower-case full name."""

    __slots__ = ("_rows", "body", "_cache")

    def __init__(self, rows: list[tuple[str, str, str]] | None = None, body: bytes = b"") -> None:
        self._rows: list[tuple[str, str, str]] = rows if rows is not None else []
        self.body = body
        self._cache: dict[str, Any] = {}

    # --- raw header access -------------------------------------------------------------------
    def get(self, name: str) -> str | None:
        key = _key(name)
        for row_key, _, value in self._rows:
            if row_key == key:
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value of a header, comma-separated lists split for list headers."""
        key = _key(name)
        values = [value for row_key, _, value in self._rows if row_key == key]
        if key not in LIST_HEADERS:
            return values
        split: list[str] = []
        for value in values:
            split.extend(split_top_level(value) if "," in value else [value.strip()])
        return split

    def has(self, name: str) -> bool:
        key = _key(name)
        return any(row_key == key for row_key, _, _ in self._rows)

    def add(self, name: str, value: str) -> None:
        key = _key(name)
        self._rows.append((key, CANONICAL_NAMES.get(key, name), value))
        self._forget(key)

    def prepend(self, name: str, value: str) -> None:
        """Insert above the first header of that name (or at the top): Via, Record-Route."""
        key = _key(name)
        row = (key, CANONICAL_NAMES.get(key, name), value)
        for index, (row_key, _, _) in enumerate(self._rows):
            if row_key == key:
                self._rows.insert(index, row)
                break
        else:
            self._rows.insert(0, row)
        self._forget(key)

    def set(self, name: str, value: str) -> None:
        """Replace every header of that name by one, keeping the position of the first."""
        key = _key(name)
        new_rows: list[tuple[str, str, str]] = []
        placed = False
        for row in self._rows:
            if row[0] == key:
                if not placed:
                    new_rows.append((key, CANONICAL_NAMES.get(key, name), value))
                    placed = True
            else:
                new_rows.append(row)
        if not placed:
            new_rows.append((key, CANONICAL_NAMES.get(key, name), value))
        self._rows = new_rows
        self._forget(key)

    def remove(self, name: str) -> None:
        key = _key(name)
        self._rows = [row for row in self._rows if row[0] != key]
        self._forget(key)

    def remove_first_value(self, name: str) -> str | None:
        """Pop the top-most value of a list header (Via, Route), splitting a comma-joined row."""
        key = _key(name)
        for index, (row_key, row_name, value) in enumerate(self._rows):
            if row_key == key:
                values = split_top_level(value) if "," in value else [value]
                if len(values) > 1:
                    self._rows[index] = (row_key, row_name, ", ".join(values[1:]))
                else:
                    del self._rows[index]
                parsed = self._cache.get(key)
                self._forget(key)
                if parsed:
                    # The rest stay valid: a proxy pops its Via off a response and reads the
                    # remaining ones, which would otherwise all be parsed a second time.
                    self._cache[key] = parsed[1:]
                return values[0].strip()
        return None

    def replace_top_via(self, via: Via) -> None:
        """Rewrite the top-most Via value (received/rport stamping) keeping the parsed list."""
        parsed = self._cache.get("via")
        rows = self._rows
        for index, row in enumerate(rows):
            if row[0] == "via":
                if "," in row[2]:  # several values in one row: split it first
                    self.remove_first_value("via")
                    self.prepend("Via", str(via))
                else:
                    rows[index] = ("via", "Via", str(via))
                break
        else:
            rows.insert(0, ("via", "Via", str(via)))
        self._forget("via")
        if parsed is not None:
            self._cache["via"] = [via, *parsed[1:]]
        self._cache[_TOP_VIA] = via

    def header_rows(self) -> list[tuple[str, str]]:
        return [(name, value) for _, name, value in self._rows]

    def _forget(self, key: str) -> None:
        self._cache.pop(key, None)
        if key == "via":
            self._cache.pop(_TOP_VIA, None)

    # --- structured accessors ----------------------------------------------------------------
    @property
    def vias(self) -> list[Via]:
        value = self._cache.get("via")
        if value is None:
            value = self._cache["via"] = _parse_vias(self)
        return value

    @property
    def top_via(self) -> Via:
        """The top-most Via, parsed alone: most messages are routed by it without the rest."""
        cache = self._cache
        vias = cache.get("via")
        if vias is not None:
            if not vias:
                raise SipError(400, "Missing Via header")
            first: Via = vias[0]
            return first
        top = cache.get(_TOP_VIA)
        if top is None:
            value = self.get("via")
            if value is None:
                raise SipError(400, "Missing Via header")
            if "," in value:
                parts = split_top_level(value)
                if not parts:
                    raise SipError(400, "Empty Via header")
                value = parts[0]
            top = cache[_TOP_VIA] = Via.parse(value)
        return top

    # The accessors below are read a dozen times per message: each tries the cache inline and
    # calls its parser directly, which mypyc compiles to a C call (through a Callable argument
    # it would be a boxed Python call).
    @property
    def call_id(self) -> str:
        value = self._cache.get("call-id")
        if value is None:
            value = self._cache["call-id"] = _parse_call_id(self)
        return value

    @property
    def cseq(self) -> CSeq:
        value = self._cache.get("cseq")
        if value is None:
            value = self._cache["cseq"] = _parse_cseq(self)
        return value

    @property
    def from_(self) -> NameAddr:
        value = self._cache.get("from")
        if value is None:
            value = self._cache["from"] = _parse_from(self)
        return value

    @property
    def to(self) -> NameAddr:
        value = self._cache.get("to")
        if value is None:
            value = self._cache["to"] = _parse_to(self)
        return value

    def _single_name_addr(self, name: str) -> NameAddr:
        value = self.get(name)
        if value is None:
            raise SipError(400, f"Missing {name} header")
        return NameAddr.parse(value, name)

    def name_addrs(self, name: str) -> list[NameAddr]:
        """Contact, Route, Record-Route, Path… as parsed name-addrs (cached until modified)."""
        key = _key(name)
        parsed = self._cache.get(key)
        if parsed is None:
            parsed = self._cache[key] = [NameAddr.parse(v, name) for v in self.get_all(key)]
        return parsed

    @property
    def contacts(self) -> list[NameAddr]:
        return self.name_addrs("contact")

    @property
    def max_forwards(self) -> int | None:
        value = self.get("max-forwards")
        if value is None:
            return None
        hops = parse_decimal(value, "Max-Forwards")
        if hops > 255:
            raise SipError(400, f"Max-Forwards {value.strip()[:20]!r} above 255")
        return hops

    @property
    def expires(self) -> int | None:
        value = self.get("expires")
        if value is None:
            return None
        return min(parse_decimal(value, "Expires"), 2**32 - 1)

    @property
    def content_type(self) -> str | None:
        value = self.get("content-type")
        return value.split(";", 1)[0].strip().lower() if value else None

    # builtins.set: inside this class, plain `set` names the method above (mypyc compiles it).
    def option_tags(self, name: str) -> builtins.set[str]:
        """Supported / Require / Proxy-Require option tags, lower-cased."""
        return {tag.lower() for tag in self.get_all(name)}

    def set_body(self, body: bytes, content_type: str | None = None) -> None:
        self.body = body
        if content_type is not None:
            self.set("Content-Type", content_type)
        elif not body:
            self.remove("Content-Type")
        self.set("Content-Length", str(len(body)))

    # --- serialisation -----------------------------------------------------------------------
    def start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """Wire form; Content-Length always states the real body length."""
        lines = [self.start_line()]
        for key, name, value in self._rows:
            if key != "content-length":
                lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {len(self.body)}")
        lines.append("")
        lines.append("")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + self.body

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    def __str__(self) -> str:
        return self.to_bytes().decode("utf-8", "replace")

    def validate(self) -> None:
        """Eagerly check the headers every transaction needs; raises SipError (400) if broken."""
        if not self.vias:
            raise SipError(400, "Missing Via header")
        seen = 0  # a bit per single-valued header: no list or set built per message
        for row in self._rows:
            bit = _SINGLE_VALUED_BITS.get(row[0], 0)
            if bit:
                if seen & bit:
                    # RFC 4475 multi01: which Call-ID, CSeq, From or To would be the real one?
                    raise SipError(400, f"More than one {row[1]} header")
                seen |= bit
        self.call_id  # noqa: B018 - parsing is the check
        self.from_  # noqa: B018
        self.to  # noqa: B018
        self.cseq  # noqa: B018
        self.max_forwards  # noqa: B018


def _parse_vias(message: Message) -> list[Via]:
    return [Via.parse(value) for value in message.get_all("via")]


def _parse_call_id(message: Message) -> str:
    value = message.get("call-id")
    if not value or not value.strip():
        raise SipError(400, "Missing Call-ID header")
    return value.strip()


def _parse_cseq(message: Message) -> CSeq:
    value = message.get("cseq")
    if value is None:
        raise SipError(400, "Missing CSeq header")
    return CSeq.parse(value)


def _parse_from(message: Message) -> NameAddr:
    return message._single_name_addr("From")


def _parse_to(message: Message) -> NameAddr:
    return message._single_name_addr("To")


_SINGLE_VALUED_BITS: Final = {
    key: 1 << index
    for index, key in enumerate(
        ("call-id", "cseq", "from", "to", "max-forwards", "content-length", "content-type")
    )
}


class Request(Message):
    __slots__ = ("method", "uri", "_ruri", "_ruri_text")

    def __init__(
        self,
        method: str,
        uri: str,
        rows: list[tuple[str, str, str]] | None = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(rows, body)
        self.method = method
        self.uri = uri
        self._ruri: SipUri | None = None
        # The text _ruri was parsed from: `uri` is a plain attribute that callers reassign,
        # and comparing texts is far cheaper than re-serialising the parsed URI on each read.
        self._ruri_text: str | None = None

    @property
    def ruri(self) -> SipUri:
        if self._ruri is None or self._ruri_text != self.uri:
            self._ruri = SipUri.parse(self.uri)
            self._ruri_text = self.uri
        return self._ruri

    @ruri.setter
    def ruri(self, value: SipUri) -> None:
        self._ruri = value
        self.uri = self._ruri_text = str(value)

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {SIP_VERSION}"

    def validate(self) -> None:
        super().validate()
        if self.cseq.method != self.method:
            raise SipError(400, "CSeq method does not match request method")
        if self.ruri.headers is not None:
            # RFC 3261 §19.1.1 forbids headers in a Request-URI; forwarding them (RFC 4475
            # escruri) would let a caller smuggle e.g. a Route, so refuse rather than strip.
            raise SipError(400, "Headers are not allowed in a Request-URI")

    def copy(self) -> Request:
        clone = Request(self.method, self.uri, list(self._rows), self.body)
        clone._cache = dict(self._cache)  # parsed values stay valid: mutators drop their key
        return clone

    def stable_tag(self) -> str:
        """A To-tag for responses this element itself gives to the request: the same for every
        retransmission of it (same Call-ID and CSeq), so they are answered identically."""
        # %-formatting: a quarter cheaper than an f-string's format spec, on every response.
        return "%08x" % (hash((self.call_id, self.cseq.number)) & 0xFFFFFFFF)  # noqa: UP031

    def response(
        self, status: int, reason: str | None = None, *, to_tag: str | None = None
    ) -> Response:
        """A response as RFC 3261 §8.2.6.2 builds it: Via, From, To (+tag), Call-ID, CSeq copied."""
        # One pass over the rows: a response is built for every request.
        copied = _TRYING_COPIED if status == 100 else _RESPONSE_COPIED
        tag_to = to_tag is not None and status > 100
        rows: list[tuple[str, str, str]] = []
        for row in self._rows:
            key = row[0]
            if key in copied:
                if tag_to and key == "to" and not _has_tag(row[2]):
                    row = (key, row[1], f"{row[2]};tag={to_tag}")
                rows.append(row)
        return Response(status, reason or reason_phrase(status), rows)


def _has_tag(to_value: str) -> bool:
    """Whether a To header value carries a tag parameter.

    A substring test is not enough: "tag" may sit in a display name or a URI parameter, and
    LWS may surround the "=" (RFC 4475 wsinv), so the rare values mentioning it are parsed.
    """
    if "tag" not in to_value.lower():
        return False
    try:
        return NameAddr.parse(to_value, "To").tag is not None
    except SipError:
        return True  # unparseable: leave it as it is rather than append to garbage


_RESPONSE_COPIED: Final = frozenset(("via", "from", "to", "call-id", "cseq"))
_TRYING_COPIED: Final = _RESPONSE_COPIED | {"timestamp"}  # RFC 3261 §8.2.6.1


class Response(Message):
    __slots__ = ("status", "reason")

    def __init__(
        self,
        status: int,
        reason: str,
        rows: list[tuple[str, str, str]] | None = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(rows, body)
        self.status = status
        self.reason = reason

    def start_line(self) -> str:
        return f"{SIP_VERSION} {self.status} {self.reason}"

    def copy(self) -> Response:
        clone = Response(self.status, self.reason, list(self._rows), self.body)
        clone._cache = dict(self._cache)  # parsed values stay valid: mutators drop their key
        return clone


_TOP_VIA: Final = "via#top"  # cache key of the top Via parsed on its own
_KEYS: Final[dict[str, str]] = {}


def _key(name: str) -> str:
    """Lookup key of a header name as code spells it ("Via", "call-id", "i"); memoised."""
    try:
        return _KEYS[name]
    except KeyError:
        lowered = name.lower()
        canonical = CANONICAL_NAMES.get(lowered)
        key = canonical.lower() if canonical is not None else lowered
        if len(_KEYS) < 4096:
            _KEYS[name] = key
        return key


_KEY_CACHE: Final[dict[str, tuple[str, str]]] = {}


def _row_key(name: str) -> tuple[str, str]:
    """(key, display name) for a header name as written on the wire; memoised for speed."""
    try:
        return _KEY_CACHE[name]
    except KeyError:
        # Checked on a cache miss only, so known names cost nothing on the hot path.
        if not is_token(name):
            raise SipError(400, f"Malformed header name {name[:40]!r}") from None
        lowered = name.lower()
        canonical = CANONICAL_NAMES.get(lowered)
        result = (canonical.lower(), canonical) if canonical else (lowered, name)
        if len(_KEY_CACHE) < 4096:
            _KEY_CACHE[name] = result
        return result


def parse_message(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Request | Response:
    """Parse one datagram or framed message. Raises SipError for anything malformed."""
    if len(data) > limits.max_message_size:
        raise SipError(513, "Message Too Large")
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        head_bytes, body = data[:end], data[end + 4 :]
    else:
        # Tolerate bare-LF senders and a message without a body that lacks the final CRLF.
        end = data.find(b"\n\n")
        if end >= 0:
            head_bytes, body = data[:end], data[end + 2 :]
        else:
            head_bytes, body = data.rstrip(b"\r\n"), b""
    try:
        head = head_bytes.decode("utf-8")
    except UnicodeDecodeError:
        head = _decode_non_utf8_head(head_bytes)
    lines = head.split("\r\n")
    if head.count("\n") != len(lines) - 1:
        # Bare LFs (alone or mixed with CRLFs): split on LF and drop the CRs.
        lines = [line.rstrip("\r") for line in head.split("\n")]
    start = lines[0]
    if not start:
        raise SipError(400, "Empty start line")
    message = _parse_start_line(start)
    rows = message._rows
    if len(lines) > limits.max_headers + 1:
        raise SipError(513, f"Too many headers (limit {limits.max_headers})")
    # Locals and the inlined name lookup: this loop runs for every header of every message.
    known_names = _KEY_CACHE
    append = rows.append
    max_length = limits.max_header_length
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t":
            if not rows:
                raise SipError(400, "Header continuation without a header")
            key, name, value = rows[-1]
            # SIP's LWS is SP and HTAB only: str.strip() would also eat NEL, NBSP, U+001C...
            continued = line.strip(" \t")
            if continued:
                rows[-1] = (key, name, f"{value} {continued}" if value else continued)
            continue
        if len(line) > max_length:
            raise SipError(513, "Header line too long")
        name, colon, value = line.partition(":")
        if not colon:
            raise SipError(400, f"Malformed header line {line[:40]!r}")
        known = known_names.get(name)
        if known is None:
            name = name.rstrip(" \t")
            if not name or " " in name:
                raise SipError(400, f"Malformed header name {name[:40]!r}")
            known = _row_key(name)
        append((known[0], known[1], value.strip(" \t")))
    message.body = _frame_body(message, body)
    return message


# Headers that are free text for people (RFC 3261 §20): legacy phones and PBXs send them in
# Latin-1, and the gateway only forwards them, so their bytes are kept as they came.
_FREE_TEXT_HEADERS: Final = frozenset(
    ("subject", "s", "user-agent", "server", "organization", "warning")
)


def _decode_non_utf8_head(head_bytes: bytes) -> str:
    """The head of a message that is not all UTF-8: refused (400) when the bytes sit in the
    start line or in any header the gateway interprets, since Call-IDs, tags, URIs, digest
    parameters and instance ids are hashed, compared and stored as text; otherwise decoded with
    surrogateescape so that the free text is relayed byte for byte."""
    name = ""
    for number, line in enumerate(head_bytes.split(b"\n")):
        if number > 0 and line[:1] not in (b" ", b"\t"):  # not a continuation: a new header
            name = line.partition(b":")[0].strip(b" \t\r").decode("latin-1").lower()
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            if number > 0 and name in _FREE_TEXT_HEADERS:
                continue
            if number == 0:
                raise SipError(400, "Start line is not UTF-8") from None
            if not is_token(name):
                raise SipError(400, "Header line is not UTF-8") from None
            shown = CANONICAL_NAMES.get(name, name)[:40]
            raise SipError(400, f"{shown} header is not UTF-8") from None
    return head_bytes.decode("utf-8", "surrogateescape")


def _parse_start_line(line: str) -> Request | Response:
    if line.startswith("SIP/"):
        version, _, rest = line.partition(" ")
        if version != SIP_VERSION:
            raise SipError(505, "Version Not Supported")
        code, _, reason = rest.partition(" ")
        if len(code) != 3 or not code.isascii() or not code.isdigit() or code[0] not in "123456":
            raise SipError(400, f"Malformed status code {code[:10]!r}")
        return Response(int(code), reason)
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        raise SipError(400, "Malformed request line")
    method, uri, version = parts
    if version.upper() != SIP_VERSION:
        raise SipError(505, "Version Not Supported")
    if not (method.isascii() and method.isalpha()) and not is_token(method):
        raise SipError(400, f"Malformed method {method[:20]!r}")
    return Request(method, uri)


def _frame_body(message: Message, body: bytes) -> bytes:
    declared = [value for key, _, value in message._rows if key == "content-length"]
    if not declared:
        return body
    if len(declared) > 1:
        # RFC 4475 mcl01: no way to know which length frames the body.
        raise SipError(400, "More than one Content-Length header")
    length = parse_decimal(declared[0], "Content-Length")
    if length > len(body):
        raise SipError(400, "Content-Length larger than the message body")
    return body[:length]
