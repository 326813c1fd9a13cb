"""Digest authentication of requests from users: 401 for the registrar, 407 for the proxy."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from sip.digest import DigestServer, VerifyOutcome, parse_credentials
from sip.errors import SipError
from sip.message import Request, Response
from sip.record import Record
from sip.server_transaction import ServerTransaction

from .users import UserStore

log = logging.getLogger(f"ws2sip.{__name__}")


_AUTH_OUTCOME_FIELDS = ("username", "refusal")
# Requests that exist only inside a dialog or transaction: refused outside one, not challenged.
NO_AUTH_METHODS = frozenset(("ACK", "CANCEL", "BYE", "PRACK"))


def auth_headers(*, proxy: bool) -> tuple[str, str]:
    """(challenge header, credentials header) of RFC 3261 §22: a proxy challenges with 407 and
    Proxy-Authenticate, answered in Proxy-Authorization; a registrar or UAS with 401 and
    WWW-Authenticate, answered in Authorization."""
    return PROXY_AUTH_HEADERS if proxy else UAS_AUTH_HEADERS


PROXY_AUTH_HEADERS: Final = ("Proxy-Authenticate", "Proxy-Authorization")
UAS_AUTH_HEADERS: Final = ("WWW-Authenticate", "Authorization")


def _ignore(username: str) -> None:
    pass


class AuthOutcome(Record):
    """Either the authenticated user name or the response that refuses the request."""

    __slots__ = _AUTH_OUTCOME_FIELDS
    FIELDS = _AUTH_OUTCOME_FIELDS

    def __init__(self, username: str | None, refusal: Response | None) -> None:
        self.username: Final = username
        self.refusal: Final = refusal


class Authenticator:
    def __init__(
        self, users: UserStore, realm: str, secret: bytes, nonce_lifetime: float,
        algorithms: tuple[str, ...] = ("MD5", "SHA-256"),
    ) -> None:
        self._users = users
        self.realm = realm
        self._digest = DigestServer(
            realm, secret, nonce_lifetime=nonce_lifetime, algorithms=algorithms
        )
        # Told the user name of every request that authenticated and of every wrong password
        # or unknown user: the deadline for unauthenticated connections and the bans after
        # repeated failures (gateway/edge_guard.py) hang on these.
        self.on_verified: Callable[[str], None] = _ignore
        self.on_failed: Callable[[str], None] = _ignore

    async def authenticate(self, request: Request, *, proxy: bool) -> AuthOutcome:
        """Check Authorization (registrar) or Proxy-Authorization (proxy) against the user store."""
        header = auth_headers(proxy=proxy)[1]
        credentials = None
        # Authorization is not a list header: get_all keeps each value whole (it contains commas).
        for value in request.get_all(header):
            try:
                parsed = parse_credentials(value)
            except SipError as error:
                return AuthOutcome(None, request.response(400, error.reason))
            if parsed.realm == self.realm:
                credentials = parsed
                break
        if credentials is None:
            return AuthOutcome(None, self._challenge(request, proxy=proxy, stale=False))
        user = await self._users.get(credentials.username, self.realm)
        if user is None:
            log.warning(
                "auth failed: unknown user %r from %s (%s %s)",
                credentials.username, request.top_via.params.get("received")
                or request.top_via.host, request.method, request.call_id,
            )
            self.on_failed(credentials.username)
            return AuthOutcome(None, self._challenge(request, proxy=proxy, stale=False))
        try:
            ha1 = user.ha1(credentials.algorithm)
        except (KeyError, ValueError):
            return AuthOutcome(None, request.response(400, "Unsupported digest algorithm"))
        outcome = self._digest.verify(credentials, request.method, ha1)
        if outcome is VerifyOutcome.OK:
            self.on_verified(credentials.username)
            return AuthOutcome(credentials.username, None)
        if outcome is VerifyOutcome.STALE:
            return AuthOutcome(None, self._challenge(request, proxy=proxy, stale=True))
        log.warning(
            "auth failed: wrong credentials for %r@%s (%s, Call-ID %s)",
            credentials.username, self.realm, request.method, request.call_id,
        )
        self.on_failed(credentials.username)
        # RFC 3261 §22.1: a failed attempt is challenged again; the client gives up.
        return AuthOutcome(None, self._challenge(request, proxy=proxy, stale=False))

    async def authenticate_caller(
        self, request: Request, server: ServerTransaction
    ) -> str | None:
        """The AoR of the local user who sent a request to the proxy, or None when a
        challenge or refusal was sent. The From must name that user (403 otherwise)."""
        if request.method in NO_AUTH_METHODS:
            raise SipError(403, f"{request.method} outside a dialog")
        outcome = await self.authenticate(request, proxy=True)
        if outcome.refusal is not None:
            server.respond_statelessly(outcome.refusal)  # no 407 retransmissions to amplify
            return None
        from_uri = request.from_.uri
        aor = f"sip:{outcome.username}@{self.realm}"
        if from_uri.address_of_record != aor:
            log.warning("%s from %s: From %s does not match authenticated user %s",
                        request.method, server.flow.remote, from_uri.address_of_record, aor)
            raise SipError(403, "From identity does not match the authenticated user")
        request.remove("proxy-authorization")
        return aor

    async def user_exists(self, username: str) -> bool:
        return await self._users.get(username, self.realm) is not None

    def _challenge(self, request: Request, *, proxy: bool, stale: bool) -> Response:
        response = request.response(407 if proxy else 401, to_tag=request.stable_tag())
        name = auth_headers(proxy=proxy)[0]
        for value in self._digest.challenge(stale=stale):
            response.add(name, value)
        return response
