"""Lexical helpers shared by the header and URI parsers (RFC 3261 §25.1).

Hand-written rather than regex-driven: the hot path (a proxy reading Via, Call-ID, CSeq and tags)
must stay in the low microseconds, and these scanners touch each character once.
"""

from __future__ import annotations

from typing import Final

from .errors import SipError

TOKEN_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
)
WHITESPACE = " \t\r\n"


def parse_decimal(text: str, what: str) -> int:
    """Value of `1*DIGIT` (surrounding whitespace allowed); anything else is a 400 naming `what`.

    str.isdigit() alone admits non-ASCII digits that int() cannot read, and int() refuses more
    than 4300 digits: both would escape as ValueError. Values past 20 significant digits
    saturate at 10**20, above every limit a caller checks.
    """
    if len(text) < 10 and text.isdigit() and text.isascii():
        return int(text)  # the usual case: plain short ASCII digits, nothing to strip
    text = text.strip()
    if not (text.isascii() and text.isdigit()):
        raise SipError(400, f"Malformed {what} {text[:20]!r}")
    significant = text.lstrip("0")
    return 10**20 if len(significant) > 20 else int(significant or "0")


def is_token(text: str) -> bool:
    if text.isalnum() and text.isascii():
        return True  # most tokens (branches, tags, methods): two scans without a set lookup
    # issuperset walks the characters in C: a generator over them costs 3-4x more.
    return bool(text) and TOKEN_CHARS.issuperset(text)


def split_top_level(text: str, separator: str = ",") -> list[str]:
    """Split on separator outside quoted strings and <...>; parts are stripped, empties kept out."""
    if separator not in text:
        stripped = text.strip()
        return [stripped] if stripped else []
    return [
        part for part in (piece.strip() for piece in _split_unquoted(text, separator, True))
        if part
    ]


def _split_unquoted(text: str, separator: str, inside_angles_too: bool) -> list[str]:
    """Raw pieces between separators that stand outside quoted strings (and, when
    inside_angles_too is set, outside <...>); empty pieces are kept."""
    parts: list[str] = []
    depth = 0
    in_quotes = False
    escaped = False
    start = 0
    for index, char in enumerate(text):
        if in_quotes:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_quotes = False
        elif char == '"':
            in_quotes = True
        elif inside_angles_too and char == "<":
            depth += 1
        elif inside_angles_too and char == ">":
            depth = max(0, depth - 1)
        elif char == separator and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    if in_quotes:
        raise SipError(400, f"Unterminated quoted string in {text[:60]!r}")
    parts.append(text[start:])
    return parts


def unquote(text: str) -> str:
    """Value of a quoted-string (with its quotes), escapes resolved; other text unchanged."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        body = text[1:-1]
        if "\\" not in body:
            return body
        out: list[str] = []
        chars = iter(body)
        for char in chars:
            out.append(next(chars, "") if char == "\\" else char)
        return "".join(out)
    return text


def quote(text: str) -> str:
    """quoted-string of text. CR and LF cannot be carried (not even as quoted-pairs): they
    become spaces, or a display name taken from one peer could inject header lines."""
    if "\r" in text or "\n" in text:
        text = text.replace("\r", " ").replace("\n", " ")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_params(text: str, context: str) -> dict[str, str | None]:
    """`name=value;flag` (what follows the first ";") into an ordered dict, lower-case names.

    Values keep their case and quotes are removed; a flag parameter maps to None. An empty
    parameter (";;", a trailing ";") is a 400, as RFC 4475 badinv01 requires.
    """
    params: dict[str, str | None] = {}
    items = text.split(";") if '"' not in text else _split_keeping_empty(text, ";")
    for item in items:
        name, eq, value = item.partition("=")
        name = name.strip()
        if not name:
            raise SipError(400, f"Empty parameter in {context}")
        if eq:
            value = value.strip()
            params[name.lower()] = unquote(value) if value.startswith('"') else value
        else:
            params[name.lower()] = None
    return params


def _split_keeping_empty(text: str, separator: str) -> list[str]:
    """Split on separator outside quoted strings, keeping empty parts (they are errors here)."""
    if "\\" not in text:
        # Without escapes a quote toggles quoting, so str.split and re-joining the pieces that
        # leave a quote open is exact and several times faster than walking each character.
        parts = []
        pending: str | None = None
        for piece in text.split(separator):
            if pending is not None:
                pending += separator + piece
                if piece.count('"') % 2:
                    parts.append(pending)
                    pending = None
            elif piece.count('"') % 2:
                pending = piece
            else:
                parts.append(piece)
        if pending is not None:
            raise SipError(400, f"Unterminated quoted string in {text[:60]!r}")
        return parts
    return _split_unquoted(text, separator, False)


def format_params(params: dict[str, str | None]) -> str:
    pieces: list[str] = []
    for name, value in params.items():
        if value is None:
            pieces.append(";" + name)
        elif value == "" or is_token(value) or _is_host_like(value):
            pieces.append(f";{name}={value}")
        else:
            pieces.append(f";{name}={quote(value)}")
    return "".join(pieces)


_IPV6_ADDRESS_CHARS: Final = frozenset("0123456789abcdefABCDEF:.")


def _is_host_like(value: str) -> bool:
    # IPv6 references, and the bare IPv6 addresses of Via received/maddr (RFC 3261 §20.42),
    # are not tokens but must stay unquoted.
    if value.startswith("[") and value.endswith("]"):
        return True
    return ":" in value and set(value) <= _IPV6_ADDRESS_CHARS


def quoted_string_end(text: str) -> int:
    """Index of the quote closing the quoted-string that opens text, or -1 if it never closes."""
    escaped = False
    for index in range(1, len(text)):
        char = text[index]
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            return index
    return -1


def find_unquoted(text: str, char: str, start: int = 0) -> int:
    """Index of char outside quoted strings, or -1."""
    in_quotes = False
    escaped = False
    for index in range(start, len(text)):
        current = text[index]
        if in_quotes:
            if escaped:
                escaped = False
            elif current == "\\":
                escaped = True
            elif current == '"':
                in_quotes = False
        elif current == '"':
            in_quotes = True
        elif current == char:
            return index
    return -1
