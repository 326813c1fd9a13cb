"""The one way a request refused with a SipError is answered: its status, reason and headers,
with the request's stable To-tag (a retransmission gets the same tag, RFC 3261 §8.2.6.2)."""

from __future__ import annotations

from sip.errors import SipError
from sip.message import Request, Response


def refusal(request: Request, error: SipError) -> Response:
    return refusal_of(request, error.status, error.reason, error.headers)


def refusal_of(
    request: Request, status: int, reason: str, headers: list[tuple[str, str]] | None = None
) -> Response:
    response = request.response(status, reason, to_tag=request.stable_tag())
    for name, value in headers or ():
        response.add(name, value)
    return response
