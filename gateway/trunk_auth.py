"""Answering a trunk's digest challenge to a request the gateway forwarded to it (what
Kamailio's uac_auth does): the same request again, with credentials and a higher CSeq."""

from __future__ import annotations

import logging

from sip.digest import build_authorization, select_challenge
from sip.errors import SipError
from sip.message import Request, Response

from .auth import auth_headers
from .config import Trunk

log = logging.getLogger(f"ws2sip.{__name__}")


def answer_trunk_challenge(request: Request, trunk: Trunk, challenge: Response) -> Request | None:
    """`request` as sent to `trunk`, answered to its 401/407 `challenge`: a copy with the trunk's
    credentials and the CSeq one higher (a new transaction, RFC 3261 §22.2). None when the trunk
    has no credentials or its challenge is unusable: the challenge then stands as the answer."""
    if not trunk.username:
        return None
    challenge_header, credentials_header = auth_headers(proxy=challenge.status == 407)
    try:
        chosen = select_challenge(challenge.get_all(challenge_header))
    except SipError as error:
        log.warning("trunk %s sent an unusable challenge: %s", trunk.name, error.reason)
        return None
    retry = request.copy()
    cseq = request.cseq
    retry.set("CSeq", f"{cseq.number + 1} {cseq.method}")
    retry.add(credentials_header, build_authorization(
        chosen, method=retry.method, uri=retry.uri, username=trunk.username,
        password=trunk.password,
    ))
    return retry
