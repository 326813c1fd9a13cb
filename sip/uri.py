"""SIP, SIPS and tel URIs (RFC 3261 §19.1, RFC 3966)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote as percent_decode

from .errors import SipError
from .grammar import parse_decimal, parse_params

SIP_SCHEMES = ("sip", "sips", "tel")
_HOST_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")
_IPV6_CHARS: Final = frozenset("0123456789abcdefABCDEF:.")
# Distinct texts whose parse is kept: URIs repeat across a dialog's messages and a client's
# refreshes; parsed values are shared read-only views (see sip.message), changed through copy().
PARSE_CACHE_SIZE = 2048


@dataclass(slots=True)
class SipUri:
    scheme: str
    host: str
    user: str | None = None
    password: str | None = None
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: str | None = None

    @classmethod
    def parse(cls, text: str) -> SipUri:
        return _parse_uri(text)

    @classmethod
    def _parse_uncached(cls, text: str) -> SipUri:
        text = text.strip()
        scheme, colon, rest = text.partition(":")
        scheme = scheme.lower()
        if not colon or not rest or not _is_scheme(scheme):
            raise SipError(400, f"Malformed URI {text[:80]!r}")
        if scheme not in SIP_SCHEMES:
            raise SipError(416, f"Unsupported URI scheme {scheme!r}")
        if scheme == "tel":
            number, has_params, params = rest.partition(";")
            if not number:
                raise SipError(400, f"Malformed tel URI {text[:80]!r}")
            params_dict = parse_params(params, "tel URI") if has_params else {}
            return cls("tel", "", user=number, params=params_dict)
        user = password = None
        # Userinfo first: a user part may hold "?" and ";" (RFC 3261 §25.1 user-unreserved),
        # and "@" can appear nowhere else in a SIP URI.
        if "@" in rest:
            userinfo, _, rest = rest.partition("@")
            user, _, pw = userinfo.partition(":")
            if not user:
                raise SipError(400, f"Empty user part in URI {text[:80]!r}")
            password = pw or None
        rest, _, headers = rest.partition("?")
        hostport, has_params, params = rest.partition(";")
        host, port = split_hostport(hostport, text)
        return cls(
            scheme,
            host,
            user=user,
            password=password,
            port=port,
            params=parse_params(params, "URI") if has_params else {},
            headers=headers or None,
        )

    def __str__(self) -> str:
        if self.scheme == "tel":
            return f"tel:{self.user}{_format_uri_params(self.params)}"
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(self.user)
            if self.password is not None:
                parts.append(":" + self.password)
            parts.append("@")
        parts.append(format_host(self.host))
        if self.port is not None:
            parts.append(f":{self.port}")
        parts.append(_format_uri_params(self.params))
        if self.headers:
            parts.append("?" + self.headers)
        return "".join(parts)

    def copy(self) -> SipUri:
        return SipUri(
            self.scheme, self.host, self.user, self.password, self.port, dict(self.params),
            self.headers,
        )

    @property
    def transport(self) -> str | None:
        value = self.params.get("transport")
        return value.lower() if value else None

    @property
    def secure(self) -> bool:
        return self.scheme == "sips"

    @property
    def is_loose_router(self) -> bool:
        return "lr" in self.params

    @property
    def user_decoded(self) -> str | None:
        # The test first: unquote is interpreted, and nearly no user part has an escape.
        if self.user is None or "%" not in self.user:
            return self.user
        return percent_decode(self.user)

    @property
    def address_of_record(self) -> str:
        """Canonical AoR: scheme, unescaped user and lower-case host; no port, params or headers."""
        scheme = "sip" if self.scheme == "sips" else self.scheme
        if self.scheme == "tel":
            return f"tel:{self.user}"
        user = self.user_decoded
        return f"{scheme}:{user}@{self.host.lower()}" if user else f"{scheme}:{self.host.lower()}"

    def equivalent(self, other: SipUri) -> bool:
        """URI comparison of RFC 3261 §19.1.4 (without the header component)."""
        if (self.scheme, self.user_decoded, self.password) != (
            other.scheme, other.user_decoded, other.password
        ):
            return False
        if self.host.lower() != other.host.lower() or self.port != other.port:
            return False
        for name in ("transport", "user", "ttl", "method", "maddr"):
            if _lower(self.params.get(name)) != _lower(other.params.get(name)):
                return False
        shared = self.params.keys() & other.params.keys()
        return all(_lower(self.params[name]) == _lower(other.params[name]) for name in shared)


@functools.lru_cache(maxsize=PARSE_CACHE_SIZE)
def _parse_uri(text: str) -> SipUri:
    return SipUri._parse_uncached(text)


def _format_uri_params(params: dict[str, str | None]) -> str:
    """URI parameters as written: the URI grammar has no quoted strings, so never quote."""
    return "".join(
        f";{name}" if value is None else f";{name}={value}" for name, value in params.items()
    )


_SCHEME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789+-.")


def _is_scheme(lowered: str) -> bool:
    """RFC 3261 §25.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )."""
    return lowered[:1].isalpha() and lowered.isascii() and _SCHEME_CHARS.issuperset(lowered)


def _lower(value: str | None) -> str | None:
    return value.lower() if value is not None else None


def split_hostport(hostport: str, context: str) -> tuple[str, int | None]:
    """"host", "host:port", "[v6]" or "[v6]:port" → (host without brackets, port)."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise SipError(400, f"Unterminated IPv6 reference in {context[:80]!r}")
        host = hostport[1:end]
        if not host or not _IPV6_CHARS.issuperset(host):
            raise SipError(400, f"Malformed IPv6 reference in {context[:80]!r}")
        port_text = hostport[end + 1 :]
        if port_text and not port_text.startswith(":"):
            raise SipError(400, f"Malformed host in {context[:80]!r}")
        port_text = port_text[1:]
    else:
        host, _, port_text = hostport.partition(":")
        if not host or not _HOST_CHARS.issuperset(host):
            raise SipError(400, f"Malformed host {host!r} in {context[:80]!r}")
    if not port_text:
        return host, None
    port = parse_decimal(port_text, "port") if port_text.strip() == port_text else 0
    if not 0 < port <= 65535:
        raise SipError(400, f"Malformed port {port_text!r} in {context[:80]!r}")
    return host, port


def format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
