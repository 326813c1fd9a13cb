"""The gateway registering itself to a trunk (`register = true`): a REGISTER client that answers
digest challenges, refreshes before the binding expires and unregisters on stop.

Written here rather than taken from a library because it must run on the gateway's own
transaction layer and listeners: the trunk sends calls back to the very socket that registered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

from sip.digest import build_authorization, select_challenge
from sip.errors import SipError
from sip.flow import announced_host, format_address, parse_address
from sip.message import Request, Response
from sip.resolver import Target
from sip.transaction import ClientTransaction, TransactionLayer
from sip.transport import TransportLayer
from sip.uri import format_host

from .auth import auth_headers
from .config import Trunk

log = logging.getLogger(f"ws2sip.{__name__}")

REQUESTED_EXPIRES = 3600
REFRESH_MARGIN = 30.0  # seconds before expiry that the refresh goes out
RETRY_DELAY = 30.0  # after a failure (refused, unreachable, timeout)
UNREGISTER_TIMEOUT = 2.0
MAX_CHALLENGES = 2  # a fresh challenge after an answered one means the credentials are wrong


class TrunkRegistrationError(Exception):
    """The trunk did not accept the registration; the message says what it answered."""


class TrunkRegistration:
    def __init__(
        self, trunk: Trunk, transactions: TransactionLayer, transport: TransportLayer,
        public_address: str = "", expires: int = REQUESTED_EXPIRES,
        retry_delay: float = RETRY_DELAY,
    ) -> None:
        self.trunk = trunk
        self._transactions = transactions
        self._transport = transport
        self._public_address = public_address
        self._expires = expires
        self._retry_delay = retry_delay
        host, port = parse_address(trunk.address)
        self._target = Target(trunk.transport, host, port)
        self._registrar_uri = f"sip:{trunk.address}"
        if trunk.transport != "udp":
            self._registrar_uri += f";transport={trunk.transport}"
        self._aor = f"sip:{trunk.username}@{format_host(host)}"
        self._call_id = f"{secrets.token_hex(12)}@ws2sip"
        self._from_tag = secrets.token_hex(6)
        self._cseq = 0
        self._task: asyncio.Task[None] | None = None
        self.registered_until: float | None = None  # loop time the current binding lapses
        self._failing = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.registered_until is not None:
            self.registered_until = None
            try:
                await asyncio.wait_for(self.register(expires=0), UNREGISTER_TIMEOUT)
            except (TimeoutError, TrunkRegistrationError, SipError) as error:
                log.info("trunk %s: unregister failed: %s", self.trunk.name, error)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                granted = await self.register(self._expires)
            except (TrunkRegistrationError, SipError) as error:
                self.registered_until = None
                if not self._failing:  # once per outage, not on every retry
                    log.warning("trunk %s: registration as %s failed: %s (retrying every %.0f s)",
                                self.trunk.name, self._aor, error, self._retry_delay)
                    self._failing = True
                await asyncio.sleep(self._retry_delay)
                continue
            if self._failing:
                log.info("trunk %s: registered again", self.trunk.name)
            else:
                log.info("trunk %s: registered as %s for %d s", self.trunk.name, self._aor,
                         granted)
            self._failing = False
            self.registered_until = loop.time() + granted
            await asyncio.sleep(max(granted - REFRESH_MARGIN, granted / 2))

    async def register(self, expires: int) -> int:
        """One REGISTER exchange (with digest answers); the expiry the trunk granted."""
        authorization: tuple[str, str] | None = None
        for _ in range(MAX_CHALLENGES + 1):
            response = await self._send(self._build(expires, authorization))
            if 200 <= response.status < 300:
                return self._granted(response, expires)
            if response.status not in (401, 407) or not self.trunk.username:
                raise TrunkRegistrationError(f"{response.status} {response.reason}")
            if authorization is not None and not _is_stale(response):
                raise TrunkRegistrationError(
                    f"{response.status} {response.reason} again: credentials of "
                    f"{self.trunk.username} refused"
                )
            authorization = self._answer(response)
        raise TrunkRegistrationError("challenged too often")

    def _answer(self, challenge: Response) -> tuple[str, str]:
        challenge_header, credentials_header = auth_headers(proxy=challenge.status == 407)
        chosen = select_challenge(challenge.get_all(challenge_header))
        value = build_authorization(
            chosen, method="REGISTER", uri=self._registrar_uri, username=self.trunk.username,
            password=self.trunk.password,
        )
        return credentials_header, value

    def _build(self, expires: int, authorization: tuple[str, str] | None) -> Request:
        self._cseq += 1
        transport = self.trunk.transport
        request = Request("REGISTER", self._registrar_uri)
        request.add("Via", self._transport.via_value(transport, self._transactions.new_branch()))
        request.add("Max-Forwards", "70")
        request.add("From", f"<{self._aor}>;tag={self._from_tag}")
        request.add("To", f"<{self._aor}>")
        request.add("Call-ID", self._call_id)
        request.add("CSeq", f"{self._cseq} REGISTER")
        request.add("Contact", f"<{self._contact_uri()}>")
        request.add("Expires", str(expires))
        if authorization is not None:
            request.add(*authorization)
        request.add("User-Agent", "ws2sip")
        request.add("Content-Length", "0")
        return request

    def _contact_uri(self) -> str:
        transport = self.trunk.transport
        bound = self._transport.listening(transport)
        if bound is None:
            raise SipError(503, f"No {transport} listener to register with trunk {self.trunk.name}")
        # Public address first even for a specific bind: behind NAT the trunk must reach it.
        host = self._public_address or announced_host(bound[0])
        uri = f"sip:{self.trunk.username}@{format_address((host, bound[1]))}"
        return uri if transport == "udp" else f"{uri};transport={transport}"

    async def _send(self, request: Request) -> Response:
        final: asyncio.Future[Response] = asyncio.get_running_loop().create_future()

        def on_response(response: Response, client: ClientTransaction) -> None:
            if response.status >= 200 and not final.done():
                final.set_result(response)

        client = self._transactions.create_client(request, self._target, on_response)
        try:
            return await final
        finally:
            if not final.done():  # cancelled while waiting: stop retransmitting
                client.terminate()

    def _granted(self, response: Response, requested: int) -> int:
        """RFC 3261 §10.2.4: our Contact's expires parameter, else Expires, else what we asked."""
        ours = self._contact_uri()
        for contact in response.contacts:
            expires = contact.params.get("expires") or ""
            if contact.uri_text == ours and expires.isdigit():
                return int(expires)
        return response.expires if response.expires is not None else requested


def _is_stale(response: Response) -> bool:
    values = response.get_all("WWW-Authenticate") + response.get_all("Proxy-Authenticate")
    return any("stale=true" in value.lower().replace(" ", "") for value in values)
