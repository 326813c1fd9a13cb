"""Errors the gateway turns into SIP responses."""

from __future__ import annotations


class MediaError(Exception):
    """A media negotiation or setup failure; `status` is the SIP status to answer (e.g. 488)."""

    def __init__(self, *, status: int = 488, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
