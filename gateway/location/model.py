"""Location-service data and the one implementation of the registrar's binding rules.

`apply_register` is pure: both backends call it inside their own atomic read-modify-write, so
RFC 3261 §10.3 steps 6-8 and RFC 5626 §6 flow replacement live in exactly one place.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Final

from sip.record import Record
from sip.uri import PARSE_CACHE_SIZE, SipUri


class OutOfOrderRegister(Exception):
    """RFC 3261 §10.3 step 7: a REGISTER reused a binding's Call-ID without a higher CSeq.

    The registrar answers it with 500 "Out of order CSeq"; nothing of the request is applied.
    """


_CONTACT_CHANGE_FIELDS = (
    "contact", "expires", "q", "instance_id", "reg_id", "pn_provider", "pn_prid", "pn_param",
)


class ContactChange(Record):
    """One Contact of a REGISTER, already parsed by the registrar. The pn_* fields are its
    RFC 8599 push parameters ("" without them): pn_provider lower-cased."""

    __slots__ = _CONTACT_CHANGE_FIELDS
    FIELDS = _CONTACT_CHANGE_FIELDS

    def __init__(
        self, contact: str, expires: int, q: float, instance_id: str | None,
        reg_id: int | None, pn_provider: str = "", pn_prid: str = "", pn_param: str = "",
    ) -> None:
        self.contact: Final = contact
        self.expires: Final = expires
        self.q: Final = q
        self.instance_id: Final = instance_id
        self.reg_id: Final = reg_id
        self.pn_provider: Final = pn_provider
        self.pn_prid: Final = pn_prid
        self.pn_param: Final = pn_param


_REGISTER_CHANGE_FIELDS = (
    "aor", "call_id", "cseq", "contacts", "remove_all", "node_id", "connection_id",
    "transport", "received", "path", "user_agent", "now", "max_contacts",
)
# Bindings kept per AoR (Kamailio's and Asterisk's max_contacts): past it the oldest go.
DEFAULT_MAX_CONTACTS = 32


class RegisterChange(Record):
    """Everything one REGISTER asks for.

    `contacts` empty with `remove_all` False is a fetch: the bindings are returned unchanged.
    """

    __slots__ = _REGISTER_CHANGE_FIELDS
    FIELDS = _REGISTER_CHANGE_FIELDS

    def __init__(
        self, aor: str, call_id: str, cseq: int, contacts: tuple[ContactChange, ...],
        remove_all: bool, node_id: str, connection_id: str, transport: str, received: str,
        path: tuple[str, ...], user_agent: str, now: float,
        max_contacts: int = DEFAULT_MAX_CONTACTS,
    ) -> None:
        self.aor: Final = aor
        self.call_id: Final = call_id
        self.cseq: Final = cseq
        self.contacts: Final = contacts
        self.remove_all: Final = remove_all
        self.node_id: Final = node_id
        self.connection_id: Final = connection_id
        self.transport: Final = transport
        self.received: Final = received
        self.path: Final = path
        self.user_agent: Final = user_agent
        self.now: Final = now
        self.max_contacts: Final = max_contacts


@dataclass(frozen=True, slots=True)
class NodeInfo:
    node_id: str
    sip_address: str  # "host:port;transport=tcp" where other nodes reach this node
    started_at: float


_BINDING_FIELDS = (
    "aor", "contact", "expires_at", "q", "call_id", "cseq", "instance_id", "reg_id",
    "node_id", "connection_id", "transport", "received", "path", "user_agent",
    "registered_at", "pn_provider", "pn_prid", "pn_param",
)
# connection_id of a push binding whose flow closed (RFC 8599): the device sleeps and is
# reached by waking it with a push, then on the flow of its next REGISTER.
ASLEEP = ""


class Binding(Record):
    __slots__ = _BINDING_FIELDS
    FIELDS = _BINDING_FIELDS

    def __init__(
        self, aor: str, contact: str, expires_at: float, q: float, call_id: str, cseq: int,
        instance_id: str | None, reg_id: int | None, node_id: str, connection_id: str,
        transport: str, received: str, path: tuple[str, ...], user_agent: str,
        registered_at: float,  # time of the REGISTER that last wrote this binding
        # RFC 8599 push parameters of the Contact ("" without them)
        pn_provider: str = "", pn_prid: str = "", pn_param: str = "",
    ) -> None:
        self.aor: Final = aor
        self.contact: Final = contact
        self.expires_at: Final = expires_at
        self.q: Final = q
        self.call_id: Final = call_id
        self.cseq: Final = cseq
        self.instance_id: Final = instance_id
        self.reg_id: Final = reg_id
        self.node_id: Final = node_id
        self.connection_id: Final = connection_id
        self.transport: Final = transport
        self.received: Final = received
        self.path: Final = path
        self.user_agent: Final = user_agent
        self.registered_at: Final = registered_at
        self.pn_provider: Final = pn_provider
        self.pn_prid: Final = pn_prid
        self.pn_param: Final = pn_param

    @property
    def key(self) -> str:
        return binding_key(self.contact, self.instance_id, self.reg_id)

    @property
    def pushable(self) -> bool:
        """Registered with RFC 8599 push parameters: outlives its flow, woken by a push."""
        return self.pn_provider != ""

    @property
    def asleep(self) -> bool:
        """A push binding whose flow closed: reached only after a push wakes the device."""
        return self.connection_id == ASLEEP

    def fallen_asleep(self) -> Binding:
        """This push binding once its flow closed: kept, without a flow."""
        return Binding(
            self.aor, self.contact, self.expires_at, self.q, self.call_id, self.cseq,
            self.instance_id, self.reg_id, self.node_id, ASLEEP, self.transport, self.received,
            self.path, self.user_agent, self.registered_at, self.pn_provider, self.pn_prid,
            self.pn_param,
        )

    def without_push(self) -> Binding:
        """This binding with its push parameters dropped (the provider refused the token)."""
        return Binding(
            self.aor, self.contact, self.expires_at, self.q, self.call_id, self.cseq,
            self.instance_id, self.reg_id, self.node_id, self.connection_id, self.transport,
            self.received, self.path, self.user_agent, self.registered_at,
        )

    def expires_in(self, now: float) -> int:
        return max(0, round(self.expires_at - now))


def binding_key(contact: str, instance_id: str | None, reg_id: int | None) -> str:
    """Identity of a binding within its AoR.

    With a +sip.instance the binding is the (instance, reg-id) pair (RFC 5626 §6, RFC 5627:
    a reg-id-less instance is one binding per instance), so a UA that reconnects from a new
    address replaces its old flow instead of leaving a ghost. Otherwise it is the Contact URI
    compared as RFC 3261 §19.1.4 would, simplified: scheme and host case-insensitively, user and
    password exactly, port as given, URI parameters by lower-cased name in any order with
    case-insensitive values, headers ignored.
    """
    if instance_id is not None:
        return f"instance {instance_id} {'' if reg_id is None else reg_id}"
    return _contact_key(contact)


# A REGISTER computes its Contact's key twice (the stored binding's and the request's), and every
# refresh repeats the same Contact text.
@functools.lru_cache(maxsize=PARSE_CACHE_SIZE)
def _contact_key(contact: str) -> str:
    uri = SipUri.parse(contact.strip().removeprefix("<").removesuffix(">"))
    params = ";".join(
        name if value is None else f"{name}={value.lower()}"
        for name, value in sorted(uri.params.items())
    )
    userinfo = "" if uri.user is None else f"{uri.user}:{uri.password or ''}@"
    return f"contact {uri.scheme}:{userinfo}{uri.host.lower()}:{uri.port or ''};{params}"


def apply_register(current: list[Binding], change: RegisterChange) -> list[Binding]:
    """The AoR's unexpired bindings after `change` (RFC 3261 §10.3 steps 6-8, RFC 5626 §6).

    All-or-nothing: raises OutOfOrderRegister before anything is changed when any touched
    binding has the request's Call-ID with a CSeq not lower than the request's.
    """
    now = change.now
    bindings = {binding.key: binding for binding in current if binding.expires_at > now}
    if change.remove_all:
        for binding in bindings.values():
            _check_order(binding, change)
        return []
    for contact in change.contacts:
        key = binding_key(contact.contact, contact.instance_id, contact.reg_id)
        existing = bindings.get(key)
        if existing is not None:
            _check_order(existing, change)
        if contact.expires <= 0:
            bindings.pop(key, None)
            continue
        bindings[key] = Binding(
            aor=change.aor,
            contact=contact.contact,
            expires_at=now + contact.expires,
            q=contact.q,
            call_id=change.call_id,
            cseq=change.cseq,
            instance_id=contact.instance_id,
            reg_id=contact.reg_id,
            node_id=change.node_id,
            connection_id=change.connection_id,
            transport=change.transport,
            received=change.received,
            path=change.path,
            user_agent=change.user_agent,
            registered_at=now,
            pn_provider=contact.pn_provider,
            pn_prid=contact.pn_prid,
            pn_param=contact.pn_param,
        )
    if len(bindings) > change.max_contacts:
        # The least recently registered go first (Asterisk's max_contacts with remove_existing):
        # a client that registers new instance ids or contacts without end cannot grow its AoR.
        newest = sorted(bindings.values(), key=_registered_at, reverse=True)
        return newest[:change.max_contacts]
    return list(bindings.values())


def _registered_at(binding: Binding) -> float:
    return binding.registered_at


def _check_order(binding: Binding, change: RegisterChange) -> None:
    if binding.call_id == change.call_id and change.cseq <= binding.cseq:
        raise OutOfOrderRegister(
            f"REGISTER for {change.aor} Call-ID {change.call_id!r} CSeq {change.cseq} is not "
            f"higher than CSeq {binding.cseq} stored for {binding.contact}"
        )


def by_preference(bindings: list[Binding]) -> list[Binding]:
    """q descending, then the most recently registered first: the order to fork or try."""
    if len(bindings) < 2:
        return list(bindings)  # an AoR's usual single binding: no key function to call
    return sorted(bindings, key=lambda binding: (-binding.q, -binding.registered_at))


def close_flow(
    current: list[Binding], node_id: str, connection_id: str
) -> tuple[list[Binding], list[Binding]]:
    """The bindings after the flow (node_id, connection_id) closed, and those it took away.

    Bindings on that flow go, except push bindings (RFC 8599), which stay asleep: the device
    is woken with a push and registers again on a new flow.
    """
    kept: list[Binding] = []
    removed: list[Binding] = []
    for binding in current:
        if binding.node_id != node_id or binding.connection_id != connection_id:
            kept.append(binding)
        elif binding.pushable:
            kept.append(binding.fallen_asleep())
        else:
            removed.append(binding)
    return kept, removed


def drop_push(current: list[Binding], prid: str) -> list[Binding]:
    """The bindings once the push token `prid` is known to be dead: a sleeping binding with it
    goes (nothing can wake it), a live one stays without its push parameters."""
    kept: list[Binding] = []
    for binding in current:
        if not binding.pushable or binding.pn_prid != prid:
            kept.append(binding)
        elif not binding.asleep:
            kept.append(binding.without_push())
    return kept
