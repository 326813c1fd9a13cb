"""What the network sent, made safe to put in a log line.

A peer chooses these bytes: raw CR or LF would forge log lines, NUL and escape sequences upset
log readers and terminals, and a 5,000-character user name would fill the log. `loggable`
escapes every non-printable character the way repr() does and keeps the first
MAX_LOGGED_CHARS characters, saying how many were left out.

`NetworkTextFilter`, installed on the log handler by `ws2sip run`, applies it to the text
arguments of every log record, so that no log call has to remember to; the SIP wire log
(debug) keeps whole messages, one line per SIP line, with the rest escaped.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

MAX_LOGGED_CHARS = 200
WIRE_LOGGER = "ws2sip.sip.wire"


def loggable(value: str | bytes | object, limit: int = MAX_LOGGED_CHARS) -> str:
    """One line of at most `limit` characters (plus the escapes and a note of what was cut)."""
    if isinstance(value, bytes):
        shown = repr(value[:limit])[2:-1]  # b'…' without its quotes: non-ASCII as \xNN
        total = len(value)
    else:
        text = value if isinstance(value, str) else str(value)
        shown = _escaped(text[:limit])
        total = len(text)
    if total > limit:
        shown += f"…[{total - limit} more]"
    return shown


def loggable_lines(text: str) -> str:
    """A whole SIP message for the wire log: its CRLF-separated lines on lines of their own,
    any other control character (a bare CR or LF, NUL) escaped."""
    return "\n".join(_escaped(line) for line in text.split("\r\n"))


def _escaped(text: str) -> str:
    # repr() escapes without the quotes it adds around them.
    return text if text.isprintable() else repr(text)[1:-1]


class NetworkTextFilter(logging.Filter):
    """Escapes (and bounds) the str, bytes and exception arguments of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if args:
            wire = record.name == WIRE_LOGGER
            if isinstance(args, Mapping):
                record.args = {key: _clean(value, wire) for key, value in args.items()}
            else:
                record.args = tuple(_clean(value, wire) for value in args)
        return True


class _Escaped(str):
    """Already escaped text: %r shows it quoted, without escaping its backslashes again."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"'{self}'"


def _clean(value: object, wire: bool) -> object:
    if wire and isinstance(value, str):
        return _Escaped(loggable_lines(value))
    if isinstance(value, (str, bytes, BaseException)):
        return _Escaped(loggable(value))
    return value
