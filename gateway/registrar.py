"""REGISTER handling: RFC 3261 §10.3, RFC 5626 (outbound flows), RFC 3327 (Path), RFC 8599
(push notification parameters)."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from urllib.parse import unquote

from sip.errors import SipError
from sip.flow import Flow
from sip.headers import NameAddr
from sip.message import Request, Response
from sip.server_transaction import ServerTransaction
from sip.uri import SipUri

from .auth import Authenticator
from .gruu import PARAM as GRUU_PARAM
from .gruu import Gruus
from .location import (
    DEFAULT_MAX_CONTACTS,
    Binding,
    ContactChange,
    LocationService,
    OutOfOrderRegister,
    RegisterChange,
)
from .refusal import refusal

log = logging.getLogger(f"ws2sip.{__name__}")

SUPPORTED_EXTENSIONS = frozenset(("path", "outbound", "gruu"))
SUPPORTED = "path, outbound, gruu"
STORE_RETRY_AFTER = 5  # seconds, in the 503 sent when the user or location store fails
# RFC 8599 §4.1: the Contact URI parameters naming the push service, the device's token there,
# and what else the service needs (APNs: "<team id>.<bundle id>.voip").
PN_PROVIDER = "pn-provider"
PN_PRID = "pn-prid"
PN_PARAM = "pn-param"
# Bounds on what is stored with every binding: an APNs token is 64 hex digits, an FCM token
# about 160 characters, a Web Push subscription (endpoint URL and keys) some hundreds.
MAX_PRID_LENGTH = 2048
MAX_PN_PARAM_LENGTH = 256


@dataclass(frozen=True, slots=True)
class RegistrarPolicy:
    domain: str
    node_id: str
    min_expires: int
    max_expires: int
    default_expires: int
    flow_timer: int
    max_contacts: int = DEFAULT_MAX_CONTACTS
    # pn-provider values the gateway can send pushes through (its [push] configuration). None
    # configured: push parameters are ignored (no Feature-Caps), as before push existed.
    push_providers: frozenset[str] = field(default_factory=frozenset)
    # The Web Push provider's VAPID public key, announced as +sip.vapid (RFC 8599 §10.2) so that
    # the app subscribes with the key the gateway signs with; "" without Web Push.
    vapid_public_key: str = ""


class Registrar:
    def __init__(
        self, policy: RegistrarPolicy, location: LocationService, auth: Authenticator,
        is_local_uri: Callable[[SipUri], bool], gruus: Gruus,
    ) -> None:
        self._is_local_uri = is_local_uri
        self._gruus = gruus
        self._policy = policy
        self._domain = policy.domain.lower()
        self._location = location
        self._auth = auth
        # Told the AoR of every REGISTER that bound a push contact (gateway.push.wakeup).
        self.on_push_registered: Callable[[str], None] | None = None

    def reconfigure(self, policy: RegistrarPolicy) -> None:
        """New expiry bounds, flow timer and contact limit (a reload): the next REGISTER
        follows them. The domain stays (it is every binding's realm)."""
        if policy.domain.lower() != self._domain:
            raise ValueError(f"registrar domain stays {self._domain}, not {policy.domain}")
        self._policy = policy

    async def answer(self, request: Request, transaction: ServerTransaction) -> None:
        """Answer a REGISTER in its server transaction: 4xx for malformed headers, 503 for a
        failing store. One compiled coroutine per REGISTER (each awaiting level would add a
        generator object)."""
        flow = transaction.flow
        try:
            response = await self._register(request, flow)
        except SipError as error:
            log.info("REGISTER from %s refused: %d %s", flow.remote, error.status, error.reason)
            response = refusal(request, error)
        except Exception:
            # A failing user or location store (Redis down, connection pool exhausted) must
            # still answer: without a final response the client retransmits into the same failure.
            log.exception("REGISTER %s from %s failed", request.call_id, flow.remote)
            response = request.response(503, to_tag=request.stable_tag())
            response.add("Retry-After", str(STORE_RETRY_AFTER))
        if response.status == 401:
            # A challenge keeps no transaction: a spoofed source costs no memory for timer J.
            transaction.respond_statelessly(response)
        else:
            transaction.respond(response)

    async def _register(self, request: Request, flow: Flow) -> Response:
        ruri = request.ruri
        if not self._is_ours(ruri):
            raise SipError(404, f"Domain {request.ruri.host} is not served here")
        # Require is rare: the test first spares building its (empty) set of tags.
        unsupported = (
            request.option_tags("require") - SUPPORTED_EXTENSIONS
            if request.has("require") else None
        )
        if unsupported:
            raise SipError(
                420, "Bad Extension", headers=[("Unsupported", ", ".join(sorted(unsupported)))]
            )
        aor_uri = request.to.uri
        if aor_uri.scheme not in ("sip", "sips") or not aor_uri.user:
            raise SipError(400, "To header must be a sip URI with a user")
        if aor_uri.host.lower() != self._domain:
            raise SipError(403, f"Address-of-record domain {aor_uri.host} is not served here")
        outcome = await self._auth.authenticate(request, proxy=False)
        if outcome.refusal is not None:
            return outcome.refusal
        if outcome.username != aor_uri.user_decoded:
            log.warning(
                "REGISTER: user %r tried to bind %s from %s", outcome.username,
                aor_uri.address_of_record, flow.remote,
            )
            raise SipError(403, "Authenticated user may only register its own address-of-record")
        supported = request.option_tags("supported")
        change = self._change(request, flow, aor_uri.address_of_record, supported)
        try:
            bindings = await self._location.register(change)
        except OutOfOrderRegister as error:
            raise SipError(500, "Out of order CSeq for this Call-ID") from error
        if self.on_push_registered is not None and \
                any(c.pn_provider and c.expires > 0 for c in change.contacts):
            # A device that can be woken registered on a live flow: a request waiting for it
            # (on any node) may go on now.
            self.on_push_registered(change.aor)
        return self._ok(request, bindings, change, supported)

    def _change(
        self, request: Request, flow: Flow, aor: str, supported: set[str]
    ) -> RegisterChange:
        policy = self._policy
        header_expires = request.expires
        contacts = request.contacts
        remove_all = any(contact.is_wildcard for contact in contacts)
        if remove_all and (len(contacts) != 1 or header_expires != 0):
            raise SipError(400, "Contact: * requires Expires: 0 and no other Contact")
        changes: list[ContactChange] = []
        for contact in () if remove_all else contacts:
            if GRUU_PARAM in contact.uri.params and self._is_ours(contact.uri):
                # RFC 5627 §6: a GRUU bound as a contact of an AoR would route to itself.
                raise SipError(403, "Forbidden (a GRUU cannot be registered as a contact)")
            expires = _contact_expires(contact, header_expires, policy.default_expires)
            if 0 < expires < policy.min_expires:
                raise SipError(
                    423, "Interval Too Brief", headers=[("Min-Expires", str(policy.min_expires))]
                )
            provider, prid, param = (
                self._push_params(contact.uri) if policy.push_providers else ("", "", "")
            )
            changes.append(
                ContactChange(
                    contact=contact.uri_text,
                    expires=min(expires, policy.max_expires),
                    q=_q_value(contact),
                    instance_id=contact.params.get("+sip.instance"),
                    reg_id=_reg_id(contact),
                    pn_provider=provider,
                    pn_prid=prid,
                    pn_param=param,
                )
            )
        return RegisterChange(
            aor=aor,
            call_id=request.call_id,
            cseq=request.cseq.number,
            contacts=tuple(changes),
            remove_all=remove_all,
            node_id=policy.node_id,
            connection_id=flow.id,
            transport=flow.transport,
            received=f"{flow.remote[0]}:{flow.remote[1]}",
            path=tuple(request.get_all("path")) if "path" in supported else (),
            user_agent=request.get("user-agent") or "",
            now=time.time(),
            max_contacts=policy.max_contacts,
        )

    def _push_params(self, uri: SipUri) -> tuple[str, str, str]:
        """(pn-provider lower-cased, pn-prid, pn-param) of a Contact URI, unescaped; empty
        strings without them. 555 (RFC 8599 §5.3) for a provider not configured here, 400 for
        incomplete or oversized ones."""
        params = uri.params
        provider = params.get(PN_PROVIDER)
        if provider is None:
            if PN_PRID in params or PN_PARAM in params:
                raise SipError(400, "pn-prid or pn-param without pn-provider")
            return "", "", ""
        provider = unquote(provider).lower()
        if provider not in self._policy.push_providers:
            raise SipError(555, f"Push Notification Service Not Supported ({provider[:20]!r})")
        prid = unquote(params.get(PN_PRID) or "")
        param = unquote(params.get(PN_PARAM) or "")
        if not prid:
            raise SipError(400, "pn-provider without pn-prid")
        if len(prid) > MAX_PRID_LENGTH or len(param) > MAX_PN_PARAM_LENGTH:
            raise SipError(400, "pn-prid or pn-param too long")
        return provider, prid, param

    def _is_ours(self, uri: SipUri) -> bool:
        return uri.host.lower() == self._domain or self._is_local_uri(uri)

    def _ok(
        self, request: Request, bindings: list[Binding], change: RegisterChange,
        supported: set[str],
    ) -> Response:
        response = request.response(200, to_tag=request.stable_tag())
        now = time.time()
        wants_gruu = "gruu" in supported
        for binding in bindings:
            value = f"<{binding.contact}>;expires={binding.expires_in(now)}"
            if binding.instance_id:
                value += f';+sip.instance="{binding.instance_id.strip(chr(34))}"'
                if wants_gruu:
                    value += self._gruu_params(binding)
            if binding.reg_id is not None:
                value += f";reg-id={binding.reg_id}"
            if binding.q != 1.0:
                value += f";q={binding.q:g}"
            response.add("Contact", value)
        if change.path:
            for path in change.path:
                response.add("Path", path)
        if "outbound" in supported and any(c.reg_id is not None for c in change.contacts):
            response.add("Require", "outbound")
            response.add("Flow-Timer", str(self._policy.flow_timer))
        response.add("Supported", SUPPORTED)
        for provider in sorted({c.pn_provider for c in change.contacts if c.pn_provider}):
            # RFC 8599 §5.3: this proxy will wake the device through that push service.
            caps = f'*;+sip.pns="{provider}"'
            if provider == "webpush" and self._policy.vapid_public_key:
                caps += f';+sip.vapid="{self._policy.vapid_public_key}"'
            response.add("Feature-Caps", caps)
        response.add("Date", _http_date(int(now)))
        return response

    def _gruu_params(self, binding: Binding) -> str:
        """RFC 5627 §6: the instance's public GRUU and a new temporary one, valid as long as
        the instance stays registered with the Call-ID of the binding's last REGISTER."""
        instance_id = binding.instance_id or ""
        public = self._gruus.public(binding.aor, instance_id)
        temporary = self._gruus.temporary(binding.aor, instance_id, binding.call_id)
        return f';pub-gruu="{public}";temp-gruu="{temporary}"'


@functools.lru_cache(maxsize=2)
def _http_date(second: int) -> str:
    return formatdate(second, usegmt=True)


def _contact_expires(contact: NameAddr, header_expires: int | None, default: int) -> int:
    value = contact.params.get("expires")
    if value is not None:
        if not value.isdigit():
            raise SipError(400, f"Malformed expires parameter {value[:20]!r}")
        return min(int(value), 2**32 - 1)
    return header_expires if header_expires is not None else default


def _q_value(contact: NameAddr) -> float:
    value = contact.params.get("q")
    if value is None:
        return 1.0
    try:
        q = float(value)
    except ValueError as error:
        raise SipError(400, f"Malformed q parameter {value[:20]!r}") from error
    if not 0.0 <= q <= 1.0:
        raise SipError(400, f"q parameter out of range: {value[:20]}")
    return q


def _reg_id(contact: NameAddr) -> int | None:
    value = contact.params.get("reg-id")
    if value is None:
        return None
    if not value.isdigit() or not 0 < int(value) < 2**31:
        raise SipError(400, f"Malformed reg-id {value[:20]!r}")
    if "+sip.instance" not in contact.params:
        raise SipError(400, "reg-id without +sip.instance")
    return int(value)
