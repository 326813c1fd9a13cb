"""What the network sent, made safe to put in a log line.

A peer chooses these bytes: raw CR or LF would forge log lines, NUL and escape sequences upset
log readers and terminals, and a 5,000-character user name would fill the log. `loggable`
escapes every non-printable character the way repr() does and keeps the first
MAX_LOGGED_CHARS characters, saying how many were left out.
"""

from __future__ import annotations

MAX_LOGGED_CHARS = 200


def loggable(value: str | bytes | object, limit: int = MAX_LOGGED_CHARS) -> str:
    """One line of at most `limit` characters (plus the escapes and a note of what was cut)."""
    if isinstance(value, bytes):
        shown = repr(value[:limit])[2:-1]  # b'…' without its quotes: non-ASCII as \xNN
    else:
        text = value if isinstance(value, str) else str(value)
        shown = text[:limit]
        if not shown.isprintable():
            shown = repr(shown)[1:-1]  # escapes without the quotes repr() adds around them
    total = len(value) if isinstance(value, (bytes, str)) else len(str(value))
    if total > limit:
        shown += f"…[{total - limit} more]"
    return shown
