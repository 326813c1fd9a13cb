"""HTTP Digest authentication for SIP (RFC 3261 §22, RFC 7616, RFC 8760, RFC 2617).

Server side: stateless MAC-signed nonces (any node sharing the secret verifies them) plus a
bounded per-process nonce-count memory against replays. Client side: challenge parsing and
Authorization header construction for registering upstream.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import hmac
import os
import re
import secrets
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Final, Protocol

from sip.errors import SipError
from sip.record import Record


class DigestAlgorithm(StrEnum):
    MD5 = "MD5"
    MD5_SESS = "MD5-sess"
    SHA256 = "SHA-256"
    SHA256_SESS = "SHA-256-sess"


class _HashObject(Protocol):
    def hexdigest(self) -> str: ...


_HashFactory = Callable[[bytes], _HashObject]
_ALGORITHM_BY_UPPER: Final = {algorithm.upper(): algorithm for algorithm in DigestAlgorithm}
_HASH_BY_ALGORITHM: Final[dict[str, _HashFactory]] = {
    DigestAlgorithm.MD5: hashlib.md5,
    DigestAlgorithm.MD5_SESS: hashlib.md5,
    DigestAlgorithm.SHA256: hashlib.sha256,
    DigestAlgorithm.SHA256_SESS: hashlib.sha256,
}
_SESSION_ALGORITHMS: Final = frozenset({DigestAlgorithm.MD5_SESS, DigestAlgorithm.SHA256_SESS})
# Preference when a server offers several challenges (RFC 8760 §2.4: strongest first).
_CLIENT_PREFERENCE: Final = (
    DigestAlgorithm.SHA256,
    DigestAlgorithm.SHA256_SESS,
    DigestAlgorithm.MD5,
    DigestAlgorithm.MD5_SESS,
)


def canonical_algorithm(algorithm: str) -> str:
    """The DigestAlgorithm spelling of a case-insensitive algorithm name, or it unchanged."""
    return _ALGORITHM_BY_UPPER.get(algorithm.upper(), algorithm)


def _hash_for(algorithm: str) -> _HashFactory:
    try:
        return _HASH_BY_ALGORITHM[canonical_algorithm(algorithm)]
    except KeyError:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}") from None


def compute_ha1(username: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """Hex digest of "username:realm:password", the value a location store keeps per user.

    For the -sess variants this is the stored part; the session key is derived per nonce.
    """
    return _hash_for(algorithm)(f"{username}:{realm}:{password}".encode()).hexdigest()


def compute_response(
    algorithm: str,
    ha1: str,
    *,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None,
    nc: str | None,
    cnonce: str | None,
) -> str:
    """The request-digest of RFC 7616 §3.4.1 for qop "auth" or none (RFC 2069 form)."""
    algorithm = canonical_algorithm(algorithm)
    hash_factory = _hash_for(algorithm)
    if algorithm in _SESSION_ALGORITHMS:
        ha1 = hash_factory(f"{ha1}:{nonce}:{cnonce}".encode()).hexdigest()
    ha2 = _ha2(algorithm, method, uri)
    if qop is None:
        return hash_factory(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
    return hash_factory(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}".encode()).hexdigest()


# HA2 covers only the method and Request-URI, which repeat for every REGISTER a client sends (and
# are no secret): one hash of the three a request-digest takes.
@functools.lru_cache(maxsize=1024)
def _ha2(algorithm: str, method: str, uri: str) -> str:
    return _hash_for(algorithm)(f"{method}:{uri}".encode()).hexdigest()


# --- auth-param lists --------------------------------------------------------------------------
# The stdlib has no strict auth-param parser (urllib.request.parse_keqv_list accepts garbage),
# so this is a small regex tokenizer over RFC 7235's grammar: token "=" ( token / quoted-string ).
_LWS = r"[ \t\r\n]*"
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_SCHEME_RE: Final = re.compile(rf"{_LWS}({_TOKEN})(?:[ \t\r\n]+|\Z)")
# Leading commas allow the empty list elements HTTP tolerates ("a=1, , b=2"); the quoted-string
# branch is written as an unrolled loop because per-character alternation is several times slower.
_PARAM_RE: Final = re.compile(
    rf"(?:{_LWS},)*{_LWS}({_TOKEN}){_LWS}={_LWS}"
    rf"(?:\"([^\"\\]*(?:\\.[^\"\\]*)*)\"|({_TOKEN})){_LWS}(?:,|\Z)",
    re.DOTALL,
)
_ESCAPE_RE: Final = re.compile(r"\\(.)", re.DOTALL)
_LWS_CHARS: Final = " \t\r\n"
_HTTP_TOKEN_CHARS: Final = frozenset(
    "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)
_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")


def _parse_auth_params(header_value: str, what: str) -> dict[str, str]:
    """Parameters of a Digest header value, names lower-cased, quoted values unescaped."""
    if header_value.startswith("Digest "):
        # What every client writes: the scheme regex would only find the same (both parsers
        # skip the LWS after it).
        start = 7
    else:
        scheme_match = _SCHEME_RE.match(header_value)
        if scheme_match is None:
            raise SipError(400, f"Bad {what} header: missing auth scheme")
        scheme = scheme_match.group(1)
        if scheme.lower() != "digest":
            raise SipError(400, f"Bad {what} header: unsupported scheme {scheme!r}")
        start = scheme_match.end()
    params = _plain_auth_params(header_value, start)
    if params is None:
        params = _tokenized_auth_params(header_value, start, what)
    if not params:
        raise SipError(400, f"Bad {what} header: no parameters")
    return params


# What lies between two quoted values (or before the first, or after the last), parsed: the
# unquoted params it holds, and the name of the quoted value it leads to. Clients format every
# request alike, so the same few gap texts come back with each request.
_Gap = tuple[tuple[tuple[str, str], ...], str | None]
_GAP_MEMO_LIMIT: Final = 512


def _plain_auth_params(header_value: str, start: int) -> dict[str, str] | None:
    """The shape every client sends (no backslash in a quoted value), at str.split speed: the
    tokenizer's regex costs several microseconds per header, a share of a REGISTER's CPU. The
    text is split on its quotes, so quoted values come out whole and only the gaps between them
    are parsed, each once per distinct text. None hands anything else to the tokenizer, which
    also words the errors."""
    body = header_value[start:]
    if "\\" in body:
        return None  # escapes: only the tokenizer resolves them
    pieces = body.split('"')
    last = len(pieces) - 1
    if last % 2:
        return None  # an unterminated quoted string
    params: dict[str, str] = {}
    count = 0
    for index in range(0, last + 1, 2):
        text = pieces[index]
        memo = _GAP_MEMOS[(index > 0) * 2 + (index < last)]
        gap = memo.get(text)
        if gap is None:
            gap = _parse_gap(text, index > 0, index < last)
            if gap is None:
                return None
            if len(memo) < _GAP_MEMO_LIMIT:
                memo[text] = gap
        pairs, quoted_name = gap
        for name, value in pairs:
            params[name] = value
        count += len(pairs)
        if quoted_name is not None:
            params[quoted_name] = pieces[index + 1]
            count += 1
    if len(params) != count:
        return None  # a duplicate parameter: the tokenizer words the error
    return params


def _parse_gap(text: str, after_quoted: bool, before_quoted: bool) -> _Gap | None:
    """Unquoted text of an auth-param list: the end of the quoted element before it (LWS), then
    list elements, then "name =" of the quoted value after it; None where the tokenizer would
    not read the same."""
    elements = text.split(",")
    if after_quoted:
        if elements[0].strip(_LWS_CHARS):
            return None  # something glued to the closing quote
        del elements[0]
    quoted_name: str | None = None
    if before_quoted:
        if not elements:
            return None  # no comma between a quoted value and the next parameter
        name, equals, rest = elements.pop().partition("=")
        name = name.strip(_LWS_CHARS)
        if not equals or rest.strip(_LWS_CHARS) or not _is_http_token(name):
            return None
        quoted_name = name.lower()
    elif not after_quoted and len(elements) == 1 and not elements[0].strip():
        return (), None  # no parameter at all, only whitespace
    elif elements and not elements[-1].strip():
        # After the last parameter the tokenizer takes one comma, then any whitespace.
        elements.pop()
        if elements and not elements[-1].strip(_LWS_CHARS):
            return None
        if not elements and not after_quoted:
            return None
    pairs: list[tuple[str, str]] = []
    for element in elements:
        name, equals, value = element.partition("=")
        if not equals:
            if element.strip(_LWS_CHARS):
                return None
            continue  # an empty list element before a parameter, which HTTP tolerates
        name = name.strip(_LWS_CHARS)
        value = value.strip(_LWS_CHARS)
        if not _is_http_token(name) or not _is_http_token(value):
            return None
        pairs.append((name.lower(), value))
    return tuple(pairs), quoted_name


def _is_http_token(text: str) -> bool:
    # issuperset walks the characters in C; a regex match costs several times more.
    return bool(text) and _HTTP_TOKEN_CHARS.issuperset(text)


# Indexed by (after a quoted value) * 2 + (before a quoted value): a gap parses differently there.
_GAP_MEMOS: Final[list[dict[str, _Gap]]] = [{}, {}, {}, {}]


def _tokenized_auth_params(header_value: str, position: int, what: str) -> dict[str, str]:
    params: dict[str, str] = {}
    # Each match starts where the previous one ended (the pattern eats the separators): a
    # match further on means finditer skipped something unparsable.
    for param in _PARAM_RE.finditer(header_value, position):
        if param.start() != position:
            break
        name, quoted, token = param.groups()
        name = name.lower()
        if name in params:
            raise SipError(400, f"Bad {what} header: duplicate parameter {name!r}")
        if quoted is None:
            params[name] = token
        else:
            params[name] = _ESCAPE_RE.sub(r"\1", quoted) if "\\" in quoted else quoted
        position = param.end()
    if position < len(header_value) and header_value[position:].strip():
        raise SipError(400, f"Bad {what} header: unparsable parameter at offset {position}")
    return params


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- server side -------------------------------------------------------------------------------
_DIGEST_CREDENTIALS_FIELDS = (
    "username", "realm", "nonce", "uri", "response", "algorithm", "qop", "nc", "cnonce",
    "opaque",
)


class DigestCredentials(Record):
    """A parsed Authorization / Proxy-Authorization header value."""

    __slots__ = _DIGEST_CREDENTIALS_FIELDS
    FIELDS = _DIGEST_CREDENTIALS_FIELDS

    def __init__(
        self, username: str, realm: str, nonce: str, uri: str, response: str, algorithm: str,
        qop: str | None, nc: str | None, cnonce: str | None, opaque: str | None,
    ) -> None:
        self.username: Final = username
        self.realm: Final = realm
        self.nonce: Final = nonce
        self.uri: Final = uri
        self.response: Final = response
        self.algorithm: Final = algorithm
        self.qop: Final = qop
        self.nc: Final = nc
        self.cnonce: Final = cnonce
        self.opaque: Final = opaque


_REQUIRED_CREDENTIAL_PARAMS: Final = ("username", "realm", "nonce", "uri", "response")


def parse_credentials(header_value: str) -> DigestCredentials:
    """Parse an Authorization value; raises SipError(400, "Bad Authorization header: ...")."""
    params = _parse_auth_params(header_value, "Authorization")
    missing = [name for name in _REQUIRED_CREDENTIAL_PARAMS if name not in params]
    if missing:
        raise SipError(400, f"Bad Authorization header: missing {', '.join(missing)}")
    qop = params.get("qop")
    nc = params.get("nc")
    cnonce = params.get("cnonce")
    if qop is not None:
        if nc is None or cnonce is None:
            raise SipError(400, "Bad Authorization header: qop without nc and cnonce")
        if len(nc) != 8 or not _HEX_DIGITS.issuperset(nc):
            raise SipError(400, f"Bad Authorization header: nc {nc!r} is not 8 hex digits")
    return DigestCredentials(
        username=params["username"],
        realm=params["realm"],
        nonce=params["nonce"],
        uri=params["uri"],
        response=params["response"],
        algorithm=canonical_algorithm(params.get("algorithm", DigestAlgorithm.MD5)),
        qop=qop,
        nc=nc,
        cnonce=cnonce,
        opaque=params.get("opaque"),
    )


class VerifyOutcome(Enum):
    OK = "ok"
    STALE = "stale"  # correct digest over an authentic but expired nonce: re-challenge stale=true
    WRONG = "wrong"  # wrong response, foreign/forged nonce, wrong realm/opaque, replayed nc


# Nonce layout: 8-byte big-endian issue time in ms || 8 random bytes || 16-byte keyed BLAKE2s.
_NONCE_HEADER: Final = struct.Struct(">Q8s")
_NONCE_MAC_LENGTH: Final = 16
_NONCE_RAW_LENGTH: Final = _NONCE_HEADER.size + _NONCE_MAC_LENGTH
_NONCE_TEXT_LENGTH: Final = 43  # base64url of 32 bytes without padding
# A nonce issued "in the future" by a peer node whose clock runs ahead is accepted up to this.
_CLOCK_SKEW_TOLERANCE_S: Final = 30.0
_TO_URLSAFE: Final = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE: Final = bytes.maketrans(b"-_", b"+/")
# Stands in for "the nonce was used without qop", which makes it single-use.
_NO_QOP_USED: Final = -1


class _RandomPool:
    """os.urandom read a few kilobytes at a time: the system call per nonce cost a quarter of
    issuing it. The bytes are the same CSPRNG output, handed out once each; a forked child
    drops what it inherited, or parent and child would issue the same nonces."""

    def __init__(self, chunk: int) -> None:
        self._chunk = chunk
        self._buffer = b""
        self._offset = 0

    def take(self, count: int) -> bytes:
        offset = self._offset
        if offset + count > len(self._buffer):
            self._buffer = os.urandom(max(self._chunk, count))
            offset = 0
        self._offset = offset + count
        return self._buffer[offset : offset + count]

    def discard(self) -> None:
        self._buffer = b""
        self._offset = 0


_RANDOM_POOL: Final = _RandomPool(4096)
os.register_at_fork(after_in_child=_RANDOM_POOL.discard)


def _random_bytes(count: int) -> bytes:
    return _RANDOM_POOL.take(count)


class DigestServer:
    """Issues challenges and verifies credentials for one realm.

    Requests without qop (RFC 2069) are accepted, but their nonce becomes single-use in this
    process because nothing else in the digest prevents replaying them; such clients simply get
    a fresh challenge for their next request.
    """

    def __init__(
        self,
        realm: str,
        secret: bytes,
        *,
        nonce_lifetime: float = 300.0,
        algorithms: tuple[str, ...] = ("SHA-256", "MD5"),
        replay_window: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secret:
            raise ValueError("DigestServer needs a non-empty secret")
        unknown = [
            name for name in algorithms if canonical_algorithm(name) not in _HASH_BY_ALGORITHM
        ]
        if unknown or not algorithms:
            raise ValueError(
                f"DigestServer algorithms {algorithms} must be among {list(DigestAlgorithm)}"
            )
        self.realm = realm
        # Keyed BLAKE2s is a MAC by design (RFC 7693 §2.5) and, being built into hashlib, costs
        # a third of OpenSSL's HMAC-SHA256 per call: a nonce is signed for every challenge and
        # checked for every authenticated request.
        self._realm_bytes = realm.encode()
        # Keyed once: each MAC copies this state, which spares hashing the key block again.
        self._keyed_mac = hashlib.blake2s(
            key=hashlib.blake2s(b"ws2sip nonce key:" + secret).digest(),
            digest_size=_NONCE_MAC_LENGTH,
        )
        self._lifetime_ms = int(nonce_lifetime * 1000)
        self._skew_ms = int(_CLOCK_SKEW_TOLERANCE_S * 1000)
        self._algorithms = tuple(canonical_algorithm(name) for name in algorithms)
        self._accepted_algorithms = frozenset(self._algorithms)
        self._replay_window = replay_window
        self._clock = clock
        self._highest_nc: OrderedDict[str, int] = OrderedDict()
        # Derived from the secret so every node sharing it hands out and accepts the same value.
        self._opaque = hmac.digest(secret, b"opaque:" + self._realm_bytes, "sha256")[:12].hex()
        self._challenge_prefix = f"Digest realm={_quote(realm)}, nonce="

    def new_nonce(self) -> str:
        header = _NONCE_HEADER.pack(int(self._clock() * 1000), _random_bytes(8))
        mac = self._mac(header)
        # binascii directly: base64.urlsafe_b64encode is the same call behind two interpreted
        # wrappers, a third of the cost of a nonce.
        encoded = binascii.b2a_base64(header + mac, newline=False).translate(_TO_URLSAFE)
        return encoded.rstrip(b"=").decode("ascii")

    def _mac(self, nonce_header: bytes) -> bytes:
        mac = self._keyed_mac.copy()
        mac.update(nonce_header + self._realm_bytes)
        return mac.digest()

    def challenge(self, *, stale: bool = False) -> list[str]:
        """WWW-Authenticate / Proxy-Authenticate values, one per algorithm, strongest first."""
        nonce = self.new_nonce()
        stale_param = ", stale=true" if stale else ""
        return [
            f'{self._challenge_prefix}"{nonce}", opaque="{self._opaque}", algorithm={algorithm},'
            f' qop="auth"{stale_param}'
            for algorithm in self._algorithms
        ]

    def _nonce_issue_ms(self, nonce: str) -> int | None:
        """The issue time of a nonce this realm's secret signed, else None."""
        if len(nonce) != _NONCE_TEXT_LENGTH:
            return None
        try:
            # What base64.urlsafe_b64decode does, without its interpreted wrappers.
            raw = binascii.a2b_base64(nonce.encode("ascii").translate(_FROM_URLSAFE) + b"=")
        except (binascii.Error, ValueError):
            return None
        header, mac = raw[: _NONCE_HEADER.size], raw[_NONCE_HEADER.size :]
        if not hmac.compare_digest(mac, self._mac(header)):
            return None
        issued: int = _NONCE_HEADER.unpack(header)[0]
        return issued

    def verify(self, creds: DigestCredentials, method: str, ha1: str) -> VerifyOutcome:
        """Check creds for a request with this method; ha1 must use creds.algorithm's hash."""
        if creds.realm != self.realm or creds.algorithm not in self._accepted_algorithms:
            return VerifyOutcome.WRONG
        if creds.opaque is not None and creds.opaque != self._opaque:
            return VerifyOutcome.WRONG
        if creds.qop is not None and creds.qop != "auth":
            return VerifyOutcome.WRONG  # auth-int is never offered
        issued_ms = self._nonce_issue_ms(creds.nonce)
        if issued_ms is None:
            return VerifyOutcome.WRONG
        expected = compute_response(
            creds.algorithm,
            ha1,
            method=method,
            uri=creds.uri,
            nonce=creds.nonce,
            qop=creds.qop,
            nc=creds.nc,
            cnonce=creds.cnonce,
        )
        # compare_digest refuses non-ASCII str, and a hex digest is ASCII anyway.
        response = creds.response.lower()
        if not response.isascii() or not hmac.compare_digest(expected, response):
            return VerifyOutcome.WRONG
        age_ms = int(self._clock() * 1000) - issued_ms
        if age_ms > self._lifetime_ms:
            return VerifyOutcome.STALE
        if age_ms < -self._skew_ms:
            return VerifyOutcome.WRONG
        # Recorded only after the digest proved knowledge of the password, so a forger cannot
        # push a nonce's counter up and lock the real client out.
        return VerifyOutcome.OK if self._record_use(creds) else VerifyOutcome.WRONG

    def _record_use(self, creds: DigestCredentials) -> bool:
        """Remember the nonce count; False when this use replays an earlier one."""
        count = _NO_QOP_USED if creds.nc is None else int(creds.nc, 16)
        previous = self._highest_nc.get(creds.nonce)
        if previous is not None:
            if previous == _NO_QOP_USED or count <= previous:
                return False
            self._highest_nc.move_to_end(creds.nonce)
        self._highest_nc[creds.nonce] = count
        if len(self._highest_nc) > self._replay_window:
            self._highest_nc.popitem(last=False)
        return True


# --- client side -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DigestChallenge:
    """A parsed WWW-Authenticate / Proxy-Authenticate header value."""

    realm: str
    nonce: str
    algorithm: str
    qop_options: tuple[str, ...]
    opaque: str | None
    stale: bool


def parse_challenge(header_value: str) -> DigestChallenge:
    """Parse a Digest challenge; raises SipError(400, "Bad WWW-Authenticate header: ...")."""
    params = _parse_auth_params(header_value, "WWW-Authenticate")
    missing = [name for name in ("realm", "nonce") if name not in params]
    if missing:
        raise SipError(400, f"Bad WWW-Authenticate header: missing {', '.join(missing)}")
    qop = params.get("qop")
    qop_options = tuple(
        option.strip().lower() for option in (qop or "").split(",") if option.strip()
    )
    return DigestChallenge(
        realm=params["realm"],
        nonce=params["nonce"],
        algorithm=canonical_algorithm(params.get("algorithm", DigestAlgorithm.MD5)),
        qop_options=qop_options,
        opaque=params.get("opaque"),
        stale=params.get("stale", "").lower() == "true",
    )


def select_challenge(values: list[str]) -> DigestChallenge:
    """The strongest usable Digest challenge among several header values.

    Values with other schemes or unsupported algorithms are skipped (RFC 7616 §3.7).
    """
    usable: list[DigestChallenge] = []
    problems: list[str] = []
    for value in values:
        try:
            challenge = parse_challenge(value)
        except SipError as error:
            problems.append(error.reason)
            continue
        if challenge.algorithm in _CLIENT_PREFERENCE and (
            "auth" in challenge.qop_options
            or (not challenge.qop_options and challenge.algorithm not in _SESSION_ALGORITHMS)
        ):
            usable.append(challenge)
        else:
            problems.append(
                f"unsupported algorithm {challenge.algorithm!r} / qop {challenge.qop_options}"
            )
    if not usable:
        raise SipError(400, f"Bad WWW-Authenticate header: no usable challenge ({problems})")
    return min(usable, key=lambda challenge: _CLIENT_PREFERENCE.index(challenge.algorithm))


def build_authorization(
    challenge: DigestChallenge,
    *,
    method: str,
    uri: str,
    username: str,
    password: str | None = None,
    ha1: str | None = None,
    nc: int = 1,
    cnonce: str | None = None,
) -> str:
    """The Authorization header value answering challenge (give password or ha1)."""
    if (password is None) == (ha1 is None):
        raise ValueError("build_authorization needs exactly one of password or ha1")
    if challenge.algorithm not in _HASH_BY_ALGORITHM:
        raise SipError(400, f"Bad WWW-Authenticate header: algorithm {challenge.algorithm!r}")
    if challenge.qop_options and "auth" not in challenge.qop_options:
        raise SipError(400, f"Bad WWW-Authenticate header: qop {challenge.qop_options} lacks auth")
    if not challenge.qop_options and challenge.algorithm in _SESSION_ALGORITHMS:
        # RFC 2069 style has no cnonce, which the -sess session key is built from.
        raise SipError(400, f"Bad WWW-Authenticate header: {challenge.algorithm} without qop")
    if ha1 is None:
        assert password is not None
        ha1 = compute_ha1(username, challenge.realm, password, challenge.algorithm)
    qop = "auth" if challenge.qop_options else None
    nc_text = f"{nc:08x}" if qop else None
    if qop is None:
        cnonce = None
    elif cnonce is None:
        cnonce = secrets.token_hex(8)
    response = compute_response(
        challenge.algorithm,
        ha1,
        method=method,
        uri=uri,
        nonce=challenge.nonce,
        qop=qop,
        nc=nc_text,
        cnonce=cnonce,
    )
    parts = [
        f"Digest username={_quote(username)}",
        f"realm={_quote(challenge.realm)}",
        f"nonce={_quote(challenge.nonce)}",
        f"uri={_quote(uri)}",
        f"response={_quote(response)}",
        f"algorithm={challenge.algorithm}",
    ]
    if challenge.opaque is not None:
        parts.append(f"opaque={_quote(challenge.opaque)}")
    if qop:
        parts.append(f"qop={qop}, nc={nc_text}, cnonce={_quote(cnonce or '')}")
    return ", ".join(parts)
