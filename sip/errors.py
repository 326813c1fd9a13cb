"""The one error type for anything off the wire that must be answered with a SIP error."""

from __future__ import annotations


class SipError(Exception):
    """Carries the status code and reason phrase to answer the offending message with."""

    def __init__(
        self, status: int, reason: str, *, headers: list[tuple[str, str]] | None = None
    ) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = headers or []
