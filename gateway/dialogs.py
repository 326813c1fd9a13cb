"""Dialogs the proxy has Record-Routed: in-dialog requests are only relayed for these, between
their two recorded parties (no open relay through forged tags, Route headers or Request-URIs),
call limits are counted on them, and they hold the call's media anchor so that hang-up, failure
or expiry frees its ports."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from sip.errors import SipError
from sip.flow import Flow
from sip.resolver import Target
from sip.tasks import TaskSet

from .flowtoken import FlowRef
from .routing import PLAIN, Side

if TYPE_CHECKING:
    from webrtc import SessionHandle

log = logging.getLogger(f"ws2sip.{__name__}")

# A dialog nobody ends (lost BYE, crashed phone) is forgotten after this long.
INVITE_DIALOG_LIFETIME = 12 * 3600.0
EARLY_DIALOG_LIFETIME = 300.0
# Early dialogs a forked request may create (one To-tag each); more tags are not learned.
MAX_CALLEE_TAGS = 16


@dataclass(eq=False, slots=True)
class Party:
    """One end of a dialog as the proxy met it: the next hop its requests go to (the flow or
    address its dialog-creating request came from or was sent to) and, by the same token, the
    only flow or address its own in-dialog requests are accepted from. A trunk's party is
    also accepted from any of that trunk's trusted sources."""

    target: Flow | Target
    trunk: str | None = None  # name of the trunk it is
    # The device's flow on another node, reached through `target` (that node) with a hop
    # token: an INVITE that replaces this party's dialog needs a token for its own Call-ID.
    node_flow: FlowRef | None = None

    def sent(self, flow: Flow) -> bool:
        """Whether a request that arrived on `flow` comes from this party's own flow/address."""
        target = self.target
        if isinstance(target, Flow):
            return flow is target or flow.id == target.id
        return flow.transport == target.transport.lower() and \
            flow.remote == (target.host, target.port)

    def is_at(self, target: Flow | Target) -> bool:
        """Whether `target` is this party's next hop (the same flow, or the same address)."""
        if isinstance(target, Flow):
            return self.sent(target)
        own = self.target
        if isinstance(own, Flow):
            return False
        return (own.transport.lower(), own.host, own.port) == \
            (target.transport.lower(), target.host, target.port)
# A subscription lives as long as its Expires says (RFC 6665 §4.1.2.1), plus time for the
# final NOTIFY the notifier sends when it ends; without Expires, the usual event default.
DEFAULT_SUBSCRIPTION_EXPIRES = 3600
SUBSCRIPTION_GRACE = 10.0
DEFAULT_MAX_DIALOGS = 20_000
RETRY_AFTER_WHEN_FULL = 10  # seconds (Retry-After of the 503 for a full table)
SWEEP_INTERVAL = 5.0  # expired dialogs are removed this often while any exist


def subscription_lifetime(expires: int | None) -> float:
    """How long a SUBSCRIBE (or REFER) dialog is kept: its granted Expires, capped at the
    default, plus the grace for the final NOTIFY."""
    granted = DEFAULT_SUBSCRIPTION_EXPIRES if expires is None else expires
    return min(granted, DEFAULT_SUBSCRIPTION_EXPIRES) + SUBSCRIPTION_GRACE


@dataclass(eq=False, slots=True)
class Dialog:
    call_id: str
    method: str  # INVITE, SUBSCRIBE or REFER: the request that created it
    caller: str | None = None  # AoR of the authenticated local caller
    callee: str | None = None  # AoR of the local callee
    trunk: str | None = None
    confirmed: bool = False
    deadline: float = 0.0
    media: SessionHandle | None = None  # the relay session while the call's media is anchored
    caller_side: Side = PLAIN
    callee_side: Side = PLAIN
    flow_ids: set[str] = field(default_factory=set)  # WebSocket/TCP flows the call lives on
    caller_tag: str | None = None  # From-tag of the request that created the dialog
    caller_party: Party | None = None
    # To-tag → the callee (branch) that answered with it: provisional responses of every fork,
    # then the 2xx. In-dialog requests toward the callee go to the party of their To-tag.
    callee_parties: dict[str, Party] = field(default_factory=dict)
    # Where the dialog-creating request was sent: a notifier's NOTIFY may come before the 2xx
    # of its SUBSCRIBE/REFER (RFC 6665 §4.1.2.4), from one of these, with a tag not yet seen.
    branch_parties: list[Party] = field(default_factory=list)
    # Added to the caller's CSeq toward a trunk that made us authenticate the INVITE (RFC 3261
    # §22.2: the authenticated retry is a new transaction with a higher CSeq).
    trunk_cseq_offset: int = 0
    # A late offer was answered by the callee's 2xx offer: the caller's answer comes in the ACK.
    ack_answer_pending: bool = False

    def learn_callee(self, tag: str, party: Party) -> None:
        if tag not in self.callee_parties and len(self.callee_parties) < MAX_CALLEE_TAGS:
            self.callee_parties[tag] = party


@dataclass(frozen=True, slots=True)
class Replaces:
    """An RFC 3891 Replaces value: the dialog an INVITE takes the place of. to_tag is the
    recipient's own tag in that dialog, from_tag its peer's (§3)."""

    call_id: str
    to_tag: str
    from_tag: str

    @classmethod
    def parse(cls, value: str) -> Replaces | None:
        """`callid;to-tag=..;from-tag=..[;early-only]`, or None when it is not one."""
        call_id, *params = (part.strip() for part in value.split(";"))
        tags = dict(param.partition("=")[::2] for param in params)
        to_tag, from_tag = tags.get("to-tag"), tags.get("from-tag")
        if not call_id or not to_tag or not from_tag:
            return None
        return cls(call_id, to_tag, from_tag)

    @classmethod
    def in_uri_headers(cls, headers: str | None) -> Replaces | None:
        """The Replaces a Refer-To URI carries (`?Replaces=<escaped value>`), if any."""
        for field_text in (headers or "").split("&"):
            name, _, value = field_text.partition("=")
            if name.strip().lower() == "replaces":
                return cls.parse(unquote(value))
        return None


@dataclass(frozen=True, slots=True)
class ReplacedParty:
    """The party an INVITE with Replaces is for: one end of a confirmed call we routed."""

    dialog: Dialog
    party: Party
    side: Side  # that party's media side
    aor: str | None  # its local user, if it is one


class DialogTable:
    def __init__(self, on_released: Callable[[Dialog], Coroutine[Any, Any, None]] | None = None,
                 max_dialogs: int = DEFAULT_MAX_DIALOGS) -> None:
        self.max_dialogs = max_dialogs
        self._sweeper: asyncio.TimerHandle | None = None
        self._full_logged_at = -60.0
        self._dialogs: dict[str, Dialog] = {}
        self._per_user: Counter[str] = Counter()
        self._per_trunk: Counter[str] = Counter()
        self._by_flow: dict[str, set[str]] = {}  # flow id → Call-IDs of the dialogs on it
        self._on_released = on_released
        self._releases = TaskSet(log, "dialog release")

    def __len__(self) -> int:
        return len(self._dialogs)

    def get(self, call_id: str) -> Dialog | None:
        dialog = self._dialogs.get(call_id)
        if dialog is not None and dialog.deadline < time.monotonic():
            self._forget(dialog)
            return None
        return dialog

    def add(self, dialog: Dialog, lifetime: float) -> Dialog:
        existing = self._dialogs.get(dialog.call_id)
        if existing is not None:
            return existing
        if len(self._dialogs) >= self.max_dialogs and not self.sweep():
            self._refuse_when_full()
        dialog.deadline = time.monotonic() + lifetime
        self._dialogs[dialog.call_id] = dialog
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._sweep_tick)
        if dialog.method == "INVITE":
            for user in _users_of(dialog):
                self._per_user[user] += 1
            if dialog.trunk:
                self._per_trunk[dialog.trunk] += 1
        return dialog

    def attach_flow(self, dialog: Dialog, flow_id: str) -> None:
        """The dialog lives on that flow: losing the flow ends it (see on_flow)."""
        dialog.flow_ids.add(flow_id)
        self._by_flow.setdefault(flow_id, set()).add(dialog.call_id)

    def on_flow(self, flow_id: str) -> list[Dialog]:
        return [self._dialogs[c] for c in self._by_flow.get(flow_id, ()) if c in self._dialogs]

    def extend(self, dialog: Dialog, lifetime: float) -> None:
        dialog.deadline = time.monotonic() + lifetime

    def replaced_party(self, replaces: Replaces) -> ReplacedParty | None:
        """The recipient a Replaces names in one of our confirmed calls (None: not ours, or
        the tags do not match). The tags are read as RFC 3891 orders them, then swapped (a
        sender that wrote them from its own point of view, as JsSIP does for a call it
        received, still names the same dialog)."""
        dialog = self.get(replaces.call_id)
        if dialog is None or dialog.method != "INVITE" or not dialog.confirmed:
            return None
        for recipient, peer in ((replaces.to_tag, replaces.from_tag),
                                (replaces.from_tag, replaces.to_tag)):
            if recipient == dialog.caller_tag and peer in dialog.callee_parties and \
                    dialog.caller_party is not None:
                return ReplacedParty(dialog, dialog.caller_party, dialog.caller_side,
                                     dialog.caller)
            party = dialog.callee_parties.get(recipient)
            if party is not None and peer == dialog.caller_tag:
                return ReplacedParty(dialog, party, dialog.callee_side, dialog.callee)
        return None

    def calls_of_user(self, aor: str) -> int:
        return self._per_user[aor]

    def calls_of_trunk(self, name: str) -> int:
        return self._per_trunk[name]

    def release(self, call_id: str) -> Dialog | None:
        dialog = self._dialogs.get(call_id)
        if dialog is not None:
            self._forget(dialog)
        return dialog

    def sweep(self) -> int:
        now = time.monotonic()
        expired = [d for d in self._dialogs.values() if d.deadline < now]
        for dialog in expired:
            # %r and a cut: a Call-ID is the sender's text (control characters, any length).
            log.info("%s dialog %r expired (no BYE, or its subscription ran out); releasing it",
                     dialog.method, dialog.call_id[:80])
            self._forget(dialog)
        return len(expired)

    def _sweep_tick(self) -> None:
        """Expired dialogs go even when nobody asks for their Call-ID again."""
        self._sweeper = None
        self.sweep()
        if self._dialogs:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._sweep_tick)

    def _refuse_when_full(self) -> None:
        now = time.monotonic()
        if now - self._full_logged_at >= 60.0:
            self._full_logged_at = now
            log.warning("dialog table full (%d): new dialogs refused with 503 (logged once a "
                        "minute)", self.max_dialogs)
        raise SipError(503, "Service Unavailable (too many dialogs)",
                       headers=[("Retry-After", str(RETRY_AFTER_WHEN_FULL))])

    def close(self) -> None:
        """Release every dialog (their media goes with them) and stop sweeping."""
        for dialog in list(self._dialogs.values()):
            self._forget(dialog)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def all(self) -> list[Dialog]:
        return list(self._dialogs.values())

    def _forget(self, dialog: Dialog) -> None:
        if self._dialogs.pop(dialog.call_id, None) is None:
            return
        for flow_id in dialog.flow_ids:
            on_flow = self._by_flow.get(flow_id)
            if on_flow is not None:
                on_flow.discard(dialog.call_id)
                if not on_flow:
                    del self._by_flow[flow_id]
        if dialog.method == "INVITE":
            for user in _users_of(dialog):
                self._per_user[user] -= 1
                if self._per_user[user] <= 0:
                    del self._per_user[user]
            if dialog.trunk:
                self._per_trunk[dialog.trunk] -= 1
                if self._per_trunk[dialog.trunk] <= 0:
                    del self._per_trunk[dialog.trunk]
        if self._on_released is not None:
            self._releases.spawn(self._on_released(dialog))


def _users_of(dialog: Dialog) -> set[str]:
    """The users whose call limit a call counts against: each once, even calling oneself."""
    return {user for user in (dialog.caller, dialog.callee) if user is not None}
