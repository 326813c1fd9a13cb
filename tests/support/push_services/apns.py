"""A stand-in for Apple's APNs provider API (HTTP/2), checking what APNs checks.

Per Apple's "Sending notification requests to APNs" and "Handling notification responses":
- only HTTP/2; `POST /3/device/<device token>` (hex), else 404 BadPath / 405 MethodNotAllowed;
- `authorization: bearer <JWT>`: ES256, header `kid` = the key id, claims `iss` = the team id
  and `iat` no older than an hour, signed by the .p8 key whose public half the stand-in holds
  (403 MissingProviderToken, InvalidProviderToken, ExpiredProviderToken);
- `apns-topic` (400 MissingTopic; a VoIP push must name `<bundle id>.voip`, else
  DeviceTokenNotForTopic), `apns-push-type` (400 InvalidPushType), `apns-priority` 5 or 10
  (400 BadPriority), `apns-expiration` a UNIX time (400 BadExpirationDate);
- a JSON object as payload (400 PayloadEmpty), at most 5120 bytes for VoIP (413
  PayloadTooLarge), here also in the shape gateway/push/apns.py documents;
- tokens marked unregistered answer 410 Unregistered with a timestamp.

Accepted pushes are recorded (`pushes`) and handed to `on_push` as they arrive.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey

from tests.support.push_services.server import Receive, Send, http_request_body

VOIP_PAYLOAD_LIMIT = 5120
PUSH_TYPES = ("alert", "background", "voip", "location", "complication", "fileprovider", "mdm",
              "liveactivity", "pushtotalk")
TOKEN_LIFETIME = 3600  # APNs refuses provider tokens older than an hour
PAYLOAD_KINDS = ("call", "cancel", "message")



@dataclass(frozen=True)
class ApnsPush:
    """One accepted notification."""

    device_token: str
    topic: str
    push_type: str
    priority: str
    expiration: str
    payload: dict[str, Any]
    token_issued_at: int  # the provider token's iat: shows when the gateway renewed it
    received_at: float


class ApnsRefusal(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


@dataclass
class ApnsStandIn:
    """The ASGI app. `public_key`, `key_id`, `team_id` are what the provider token is checked
    against; `bundle_id` is the app the topic must name."""

    public_key: EllipticCurvePublicKey
    key_id: str
    team_id: str
    bundle_id: str
    unregistered: set[str] = field(default_factory=set)  # device tokens answering 410
    pushes: list[ApnsPush] = field(default_factory=list)
    refusals: list[tuple[int, str]] = field(default_factory=list)
    on_push: Callable[[ApnsPush], None] | None = None
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def wait_for_pushes(self, count: int, timeout: float = 10.0) -> list[ApnsPush]:
        """Until at least `count` pushes were accepted; returns them all."""
        async with self.arrived:
            await asyncio.wait_for(
                self.arrived.wait_for(lambda: len(self.pushes) >= count), timeout)
        return list(self.pushes)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        body = await http_request_body(scope, receive, send)
        if body is None:
            return
        apns_id = str(uuid.uuid4())
        try:
            push = self._check(scope, body)
        except ApnsRefusal as refusal:
            self.refusals.append((refusal.status, refusal.reason))
            answer: dict[str, Any] = {"reason": refusal.reason}
            if refusal.status == 410:
                answer["timestamp"] = int(time.time() * 1000)
            await _respond(send, refusal.status, apns_id, json.dumps(answer).encode())
            return
        self.pushes.append(push)
        if self.on_push is not None:
            self.on_push(push)
        async with self.arrived:
            self.arrived.notify_all()
        await _respond(send, 200, apns_id, b"")

    def _check(self, scope: dict[str, Any], body: bytes) -> ApnsPush:
        if scope.get("http_version") != "2":
            raise ApnsRefusal(400, "BadPath")  # APNs speaks HTTP/2 only
        path: str = scope["path"]
        if not path.startswith("/3/device/"):
            raise ApnsRefusal(404, "BadPath")
        if scope["method"] != "POST":
            raise ApnsRefusal(405, "MethodNotAllowed")
        device_token = path.removeprefix("/3/device/")
        if not device_token:
            raise ApnsRefusal(400, "MissingDeviceToken")
        if not all(c in "0123456789abcdefABCDEF" for c in device_token):
            raise ApnsRefusal(400, "BadDeviceToken")
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1").lower()
            if name in headers:
                raise ApnsRefusal(400, "DuplicateHeaders")
            headers[name] = raw_value.decode("latin-1")
        issued_at = self._check_token(headers.get("authorization"))
        topic = headers.get("apns-topic")
        if not topic:
            raise ApnsRefusal(400, "MissingTopic")
        push_type = headers.get("apns-push-type", "")
        if push_type not in PUSH_TYPES:
            raise ApnsRefusal(400, "InvalidPushType")
        if push_type == "voip" and topic != f"{self.bundle_id}.voip":
            raise ApnsRefusal(400, "DeviceTokenNotForTopic")
        if push_type != "voip" and topic != self.bundle_id:
            raise ApnsRefusal(400, "TopicDisallowed")
        priority = headers.get("apns-priority", "10")
        if priority not in ("1", "5", "10"):
            raise ApnsRefusal(400, "BadPriority")
        expiration = headers.get("apns-expiration", "0")
        if not expiration.isdigit():
            raise ApnsRefusal(400, "BadExpirationDate")
        if not body:
            raise ApnsRefusal(400, "PayloadEmpty")
        if len(body) > VOIP_PAYLOAD_LIMIT:
            raise ApnsRefusal(413, "PayloadTooLarge")
        try:
            payload = json.loads(body)
        except ValueError:
            raise ApnsRefusal(400, "PayloadEmpty") from None
        _check_payload_shape(payload)
        if device_token.lower() in self.unregistered:
            raise ApnsRefusal(410, "Unregistered")
        return ApnsPush(device_token.lower(), topic, push_type, priority, expiration, payload,
                        issued_at, time.time())

    def _check_token(self, authorization: str | None) -> int:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise ApnsRefusal(403, "MissingProviderToken")
        token = authorization[len("bearer "):].strip()
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, self.public_key, algorithms=["ES256"],
                                options={"require": ["iss", "iat"], "verify_iat": True})
        except jwt.PyJWTError:
            raise ApnsRefusal(403, "InvalidProviderToken") from None
        if header.get("alg") != "ES256" or header.get("kid") != self.key_id or \
                claims.get("iss") != self.team_id:
            raise ApnsRefusal(403, "InvalidProviderToken")
        issued_at = claims["iat"]
        if not isinstance(issued_at, int) or time.time() - issued_at > TOKEN_LIFETIME:
            raise ApnsRefusal(403, "ExpiredProviderToken")
        return issued_at


def _check_payload_shape(payload: Any) -> None:
    """The shape gateway/push/apns.py sends: {"aps": {}, "ws2sip": {"type", "call-id",
    "from", "to"}}."""
    if not isinstance(payload, dict) or not isinstance(payload.get("aps"), dict):
        raise ApnsRefusal(400, "PayloadEmpty")
    body = payload.get("ws2sip")
    if not isinstance(body, dict) or body.get("type") not in PAYLOAD_KINDS or \
            not all(isinstance(body.get(key), str) and body[key]
                    for key in ("call-id", "from", "to")):
        raise ApnsRefusal(400, "PayloadEmpty")


async def _respond(send: Send, status: int, apns_id: str, body: bytes) -> None:
    headers = [(b"apns-id", apns_id.encode())]
    if body:
        headers.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
