"""The gateway as the dialog-event notifier (RFC 4235, over RFC 6665) for its own users.

A browser does not answer SUBSCRIBE Event: dialog, but the gateway sees every call it proxies.
So a SUBSCRIBE for the dialog package to a local user is answered here, and each watcher is
sent dialog-info XML (trying, early, confirmed, terminated) as the user's calls move: busy lamps
between two browser users work without a PBX. Subscriptions to anyone else (a PBX extension)
are routed like calls. Only the calls this node proxies are seen: in a cluster a watcher
learns about the calls that pass through the node it subscribed on.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

from sip.errors import SipError
from sip.flow import Flow, format_address
from sip.message import Request, Response
from sip.resolver import Target
from sip.server_transaction import ServerTransaction
from sip.transaction import ClientTransaction, TransactionLayer
from sip.transport import TransportLayer
from sip.uri import SipUri

from .dialogs import Dialog

log = logging.getLogger(f"ws2sip.{__name__}")

EVENT = "dialog"
CONTENT_TYPE = "application/dialog-info+xml"
MAX_EXPIRES = 3600
DEFAULT_EXPIRES = 3600  # RFC 4235 §3.2 default
MAX_SUBSCRIPTIONS = 10_000
# A watched user's calls in the notifications: a user never has more than a handful.
MAX_CALLS_SHOWN = 8
# States this module is told of, in the order a call goes through them (RFC 4235 §3.7.1).
STATES = ("trying", "early", "confirmed", "terminated")


@dataclass(slots=True)
class CallView:
    """One call of a watched user as its watchers see it."""

    dialog_id: str
    direction: str  # initiator or recipient (RFC 4235 §4.1.6.2)
    state: str
    remote: str | None  # the other party's AoR, when known


@dataclass(eq=False, slots=True)
class Subscription:
    call_id: str
    watcher_tag: str  # the subscriber's From-tag
    our_tag: str
    watched: str  # the user's name (the AoR's user part)
    entity: str  # the watched AoR, as written in dialog-info
    watcher: str  # the subscriber's From header value, our NOTIFY's To
    remote_target: str  # the subscriber's Contact URI: our NOTIFY's Request-URI
    next_hop: Flow | Target
    transport: str
    cseq: int = 0
    version: int = 0
    deadline: float = 0.0  # loop time the subscription ends unless refreshed
    expiry: asyncio.TimerHandle | None = None
    sending: set[ClientTransaction] = field(default_factory=set)

    def sent_by(self, flow: Flow) -> bool:
        hop = self.next_hop
        if isinstance(hop, Flow):
            return flow is hop or flow.id == hop.id
        return flow.transport == hop.transport.lower() and flow.remote == (hop.host, hop.port)


class DialogEventNotifier:
    def __init__(self, *, domain: str, transactions: TransactionLayer,
                 transport: TransportLayer, public_address: str = "") -> None:
        self._domain = domain.lower()
        self._transactions = transactions
        self._transport = transport
        self._public_address = public_address
        self._subscriptions: dict[str, Subscription] = {}  # by Call-ID
        self._watchers: dict[str, set[str]] = {}  # watched user → Call-IDs of subscriptions
        self._calls: dict[str, dict[str, CallView]] = {}  # watched user → dialog id → call

    # --- calls the proxy reports -------------------------------------------------------------
    def dialog_changed(self, dialog: Dialog, state: str) -> None:
        """An INVITE dialog moved to `state` (one of STATES): tell the watchers of each local
        user in it."""
        if dialog.method != "INVITE":
            return
        dialog_id = hashlib.blake2b(dialog.call_id.encode(), digest_size=8).hexdigest()
        for aor, direction, remote in ((dialog.caller, "initiator", dialog.callee),
                                       (dialog.callee, "recipient", dialog.caller)):
            if aor is None:
                continue
            user = _user_of(aor)
            calls = self._calls.setdefault(user, {})
            view = calls.get(dialog_id)
            if view is not None and STATES.index(state) <= STATES.index(view.state):
                continue  # never backwards (a late 180 after the 200)
            if state == "terminated":
                calls.pop(dialog_id, None)
                if not calls:
                    del self._calls[user]
            elif view is None:
                if len(calls) >= MAX_CALLS_SHOWN:
                    continue
                calls[dialog_id] = CallView(dialog_id, direction, state, remote)
            else:
                view.state = state
            ended = CallView(dialog_id, direction, state, remote) if state == "terminated" \
                else None
            for call_id in list(self._watchers.get(user, ())):
                subscription = self._subscriptions.get(call_id)
                if subscription is not None:
                    self._notify(subscription, ended=ended)

    # --- SUBSCRIBE -----------------------------------------------------------------------------
    @staticmethod
    def is_dialog_subscribe(request: Request) -> bool:
        event = (request.get("event") or "").split(";")[0].strip()
        return request.method == "SUBSCRIBE" and event.lower() == EVENT

    def owns(self, request: Request) -> bool:
        """Whether an in-dialog request belongs to one of our subscriptions."""
        subscription = self._subscriptions.get(request.call_id)
        return subscription is not None and request.to.tag == subscription.our_tag

    def subscribe(self, request: Request, server: ServerTransaction, watched: SipUri) -> None:
        """A new subscription to a local user's dialogs: 200 and a first NOTIFY."""
        expires = self._granted(request)
        if len(self._subscriptions) >= MAX_SUBSCRIPTIONS:
            raise SipError(503, "Service Unavailable (too many subscriptions)",
                           headers=[("Retry-After", "30")])
        contacts = request.contacts
        if not contacts or request.from_.tag is None:
            raise SipError(400, "Bad Request (SUBSCRIBE needs a Contact and a From-tag)")
        flow = server.flow
        host, port = flow.remote
        subscription = Subscription(
            call_id=request.call_id, watcher_tag=request.from_.tag,
            our_tag=secrets.token_hex(6), watched=watched.user_decoded or "",
            entity=f"sip:{watched.user}@{self._domain}", watcher=request.get("from") or "",
            remote_target=contacts[0].uri_text,
            next_hop=flow if flow.reliable else Target(flow.transport, host, port),
            transport=flow.transport,
        )
        server.respond(self._ok(request, subscription, expires))
        if expires == 0:  # a fetch (RFC 6665 §4.4.3): one NOTIFY, and done
            self._notify(subscription, terminated="timeout")
            return
        self._subscriptions[subscription.call_id] = subscription
        self._watchers.setdefault(subscription.watched, set()).add(subscription.call_id)
        self._arm(subscription, expires)
        log.info("dialog subscription %r to %s from %s for %d s", request.call_id[:80],
                 subscription.entity, flow.remote, expires)
        self._notify(subscription)

    def in_dialog(self, request: Request, server: ServerTransaction) -> None:
        """A refresh or an unsubscribe (SUBSCRIBE), or anything else sent into a subscription."""
        subscription = self._subscriptions[request.call_id]
        if request.from_.tag != subscription.watcher_tag:
            raise SipError(481, "Subscription Does Not Exist")
        if not subscription.sent_by(server.flow):
            raise SipError(403, "Forbidden (not a party of this subscription)")
        if not self.is_dialog_subscribe(request):
            raise SipError(405, "Method Not Allowed", headers=[("Allow", "SUBSCRIBE")])
        expires = self._granted(request)
        server.respond(self._ok(request, subscription, expires))
        if expires == 0:
            self._end(subscription)
            self._notify(subscription, terminated="timeout")
            return
        self._arm(subscription, expires)
        self._notify(subscription)

    def flow_closed(self, flow_id: str) -> None:
        """A watcher whose connection closed is gone: its subscriptions end without a NOTIFY."""
        for subscription in list(self._subscriptions.values()):
            hop = subscription.next_hop
            if isinstance(hop, Flow) and hop.id == flow_id:
                self._end(subscription)

    def close(self) -> None:
        for subscription in list(self._subscriptions.values()):
            self._end(subscription)

    def _granted(self, request: Request) -> int:
        requested = request.expires
        # Any short Expires is granted: each costs one SUBSCRIBE, authenticated like a call.
        return DEFAULT_EXPIRES if requested is None else min(requested, MAX_EXPIRES)

    def _ok(self, request: Request, subscription: Subscription, expires: int) -> Response:
        response = request.response(200, to_tag=subscription.our_tag)
        response.add("Contact", f"<{self._contact(subscription)}>")
        response.add("Expires", str(expires))
        response.add("Content-Length", "0")
        return response

    def _arm(self, subscription: Subscription, expires: int) -> None:
        if subscription.expiry is not None:
            subscription.expiry.cancel()
        subscription.expiry = asyncio.get_running_loop().call_later(
            expires, self._expire, subscription
        )
        subscription.deadline = asyncio.get_running_loop().time() + expires

    def _expire(self, subscription: Subscription) -> None:
        subscription.expiry = None
        log.info("dialog subscription %r to %s expired", subscription.call_id[:80],
                 subscription.entity)
        self._end(subscription)
        self._notify(subscription, terminated="timeout")

    def _end(self, subscription: Subscription) -> None:
        if self._subscriptions.get(subscription.call_id) is not subscription:
            return
        del self._subscriptions[subscription.call_id]
        watchers = self._watchers.get(subscription.watched)
        if watchers is not None:
            watchers.discard(subscription.call_id)
            if not watchers:
                del self._watchers[subscription.watched]
        if subscription.expiry is not None:
            subscription.expiry.cancel()
            subscription.expiry = None

    # --- NOTIFY ------------------------------------------------------------------------------
    def _notify(self, subscription: Subscription, *, terminated: str | None = None,
                ended: CallView | None = None) -> None:
        subscription.cseq += 1
        version = subscription.version
        subscription.version += 1
        if terminated is not None:
            state = f"terminated;reason={terminated}"
        else:
            remaining = max(0, round(subscription.deadline - asyncio.get_running_loop().time()))
            state = f"active;expires={remaining}"
        calls = list(self._calls.get(subscription.watched, {}).values())
        if ended is not None:
            calls.append(ended)
        body = dialog_info(subscription.entity, version, calls).encode()

        def on_response(response: Response, client: ClientTransaction) -> None:
            if response.status < 200:
                return
            subscription.sending.discard(client)
            if response.status >= 300:
                # 481 (the watcher forgot it), 408 (gone), anything else: stop notifying.
                log.info("dialog subscription %r ended: NOTIFY answered %d %s",
                         subscription.call_id[:80], response.status, response.reason)
                self._end(subscription)

        # Never raises: this runs inside the proxy's handling of someone else's call.
        try:
            request = self._notify_request(subscription, state, body)
            client = self._transactions.create_client(request, subscription.next_hop, on_response)
        except (SipError, ValueError) as error:
            log.info("dialog NOTIFY for %r not sent: %s", subscription.call_id[:80], error)
            self._end(subscription)
            return
        subscription.sending.add(client)

    def _notify_request(self, subscription: Subscription, state: str, body: bytes) -> Request:
        request = Request("NOTIFY", subscription.remote_target)
        request.add("Via", self._via(subscription))
        request.add("Max-Forwards", "70")
        request.add("From", f"<{subscription.entity}>;tag={subscription.our_tag}")
        request.add("To", subscription.watcher)
        request.add("Call-ID", subscription.call_id)
        request.add("CSeq", f"{subscription.cseq} NOTIFY")
        request.add("Contact", f"<{self._contact(subscription)}>")
        request.add("Event", EVENT)
        request.add("Subscription-State", state)
        request.set_body(body, CONTENT_TYPE)
        return request

    def _via(self, subscription: Subscription) -> str:
        branch = self._transactions.new_branch()
        hop = subscription.next_hop
        if isinstance(hop, Flow) and hop.transport in ("ws", "wss"):
            host = self._public_address or hop.local[0]
            return f"SIP/2.0/{hop.transport.upper()} {format_address((host, hop.local[1]))}" \
                f";branch={branch};rport"
        return self._transport.via_value(subscription.transport, branch)

    def _contact(self, subscription: Subscription) -> str:
        hop = subscription.next_hop
        if isinstance(hop, Flow):
            host, port = self._public_address or hop.local[0], hop.local[1]
        else:
            bound = self._transport.listening(subscription.transport) or ("127.0.0.1", 5060)
            host, port = self._public_address or bound[0], bound[1]
        uri = f"sip:{subscription.watched}@{format_address((host, port))}"
        transport = subscription.transport
        return uri if transport == "udp" else f"{uri};transport={transport}"


def dialog_info(entity: str, version: int, calls: list[CallView]) -> str:
    """A full-state dialog-info document (RFC 4235 §4)."""
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" '
        f'version="{version}" state="full" entity={quoteattr(entity)}>',
    ]
    for call in calls:
        lines.append(f'  <dialog id="{call.dialog_id}" direction="{call.direction}">')
        lines.append(f"    <state>{call.state}</state>")
        if call.remote is not None:
            lines.append(f"    <remote><identity>{escape(call.remote)}</identity></remote>")
        lines.append("  </dialog>")
    lines.append("</dialog-info>")
    return "\n".join(lines) + "\n"


def _user_of(aor: str) -> str:
    _, _, rest = aor.partition(":")
    user, _, _ = rest.partition("@")
    return user
