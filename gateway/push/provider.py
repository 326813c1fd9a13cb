"""What every push provider implements, and what the proxy and registrar see of it.

A binding registered with RFC 8599 Contact parameters (`pn-provider`, `pn-prid`, `pn-param`)
carries a `PushTarget`. To wake the device the proxy asks the provider named by `pn-provider` to
send a `PushRequest`; the provider answers with a `PushOutcome` and never raises for a refusal
by the remote service (network errors and refusals are `FAILED` with a reason)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class PushTarget:
    """The RFC 8599 parameters of one binding's Contact."""

    provider: str  # pn-provider, lower-cased: "apns", "fcm", "webpush"
    prid: str  # pn-prid: the device token (APNs), registration token (FCM), subscription (Web Push)
    param: str = ""  # pn-param: APNs "<team id>.<bundle id>.voip"; FCM project id; "" if unused


class PushKind(enum.Enum):
    INCOMING_CALL = "call"  # wake up: a request waits for the device's REGISTER
    CALL_CANCELLED = "cancel"  # the caller gave up before the device came (CallKit must end it)
    MESSAGE = "message"  # an out-of-dialog MESSAGE waits


@dataclass(frozen=True, slots=True)
class PushRequest:
    kind: PushKind
    call_id: str  # the waiting request's Call-ID: lets the app match a cancel to its call
    caller: str  # the From display name or URI, for the notification's text
    callee: str  # the address-of-record being woken


class PushOutcome(enum.Enum):
    SENT = "sent"  # the provider accepted it (delivery is never guaranteed)
    FAILED = "failed"  # refused or unreachable; worth trying again later
    # APNs 410 Unregistered, FCM UNREGISTERED, Web Push 404/410: drop the binding's push parameters
    INVALID_TOKEN = "invalid_token"


@dataclass(frozen=True, slots=True)
class PushResult:
    outcome: PushOutcome
    reason: str = ""  # the provider's own words (status and error code), for the log


class PushProvider(Protocol):
    """One push service. Implementations keep one HTTP/2 connection and their credentials."""

    name: str  # the pn-provider value it serves

    async def send(self, target: PushTarget, request: PushRequest) -> PushResult: ...

    async def close(self) -> None: ...
