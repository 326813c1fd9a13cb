"""A stand-in for a Web Push push service (RFC 8030) and the browser behind it, checking what
they check.

`subscribe()` plays PushManager.subscribe(): it makes the user agent's ECDH key pair and auth
secret (RFC 8291 section 3) and a push resource, optionally restricted to one application
server key (RFC 8292 section 4). A push (`POST /push/<id>`):
- `Authorization: vapid t=<JWT>, k=<key>` (RFC 8292 section 3): the JWT's ES256 signature
  checked with `k`, `aud` this service's origin, `exp` in the future and at most 24 hours away,
  `sub` a mailto: or https: URI; a restricted subscription also needs `k` to be its key. Else
  401 (no authentication) or 403 (invalid);
- `TTL` present (RFC 8030 section 5.2, else 400), `Urgency` one of RFC 8030's (else 400), a
  `Topic` at most 32 base64url characters (section 5.4, else 400);
- a body only with `Content-Encoding: aes128gcm` (else 415), at most 4096 bytes (else 413),
  decrypted here with the user agent's private key and auth secret, RFC 8291 done independently
  of the gateway's library (cryptography's HKDF and AES-GCM): a payload that does not decrypt
  is refused 400;
- answers 201 Created with a Location; unknown subscriptions 404, expired ones 410 Gone
  (RFC 8030 section 7.3).

Accepted messages are recorded with the plaintext, the VAPID claims and the HTTP version.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import string
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tests.support.push_services.server import Receive, Send, http_request_body

MAX_PAYLOAD = 4096  # RFC 8291 section 4: push services must accept at least this much
MAX_VAPID_LIFETIME = 24 * 3600
URGENCIES = ("very-low", "low", "normal", "high")
TOPIC_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-_")



def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.X962,
                            serialization.PublicFormat.UncompressedPoint)


@dataclass
class Subscription:
    """What the browser holds for one subscription (its private key and auth secret never
    leave it) and the push service's state of it."""

    id: str
    endpoint: str
    ua_key: ec.EllipticCurvePrivateKey
    auth_secret: bytes
    application_server_key: str | None  # RFC 8292 restriction; None: anyone may push
    gone: bool = False

    @property
    def p256dh(self) -> str:
        """PushSubscription.toJSON().keys.p256dh"""
        return b64url(_point(self.ua_key.public_key()))

    @property
    def auth(self) -> str:
        return b64url(self.auth_secret)


@dataclass(frozen=True)
class WebPushMessage:
    subscription_id: str
    plaintext: bytes  # b"" for a push without payload
    ttl: int
    urgency: str
    topic: str
    vapid_claims: dict[str, Any]
    vapid_key: str
    http_version: str


class Refusal(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


@dataclass
class WebPushStandIn:
    """The ASGI app. `origin` is set once the server listens (the VAPID `aud` it expects)."""

    origin: str = ""
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    messages: list[WebPushMessage] = field(default_factory=list)
    refusals: list[tuple[int, str]] = field(default_factory=list)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    def subscribe(self, application_server_key: str | None = None) -> Subscription:
        subscription_id = secrets.token_urlsafe(16)
        subscription = Subscription(
            subscription_id, f"{self.origin}/push/{subscription_id}",
            ec.generate_private_key(ec.SECP256R1()), secrets.token_bytes(16),
            application_server_key,
        )
        self.subscriptions[subscription_id] = subscription
        return subscription

    async def wait_for_messages(self, count: int, timeout: float = 10.0
                                ) -> list[WebPushMessage]:
        async with self.arrived:
            await asyncio.wait_for(
                self.arrived.wait_for(lambda: len(self.messages) >= count), timeout)
        return list(self.messages)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        body = await http_request_body(scope, receive, send)
        if body is None:
            return
        headers = {name.decode("latin-1").lower(): value.decode("latin-1")
                   for name, value in scope["headers"]}
        try:
            accepted = self._push(scope["method"], scope["path"], headers, body,
                                  scope["http_version"])
        except Refusal as refusal:
            self.refusals.append((refusal.status, refusal.reason))
            await send({"type": "http.response.start", "status": refusal.status,
                        "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": refusal.reason.encode()})
            return
        self.messages.append(accepted)
        async with self.arrived:
            self.arrived.notify_all()
        location = f"{self.origin}/message/{secrets.token_urlsafe(12)}".encode()
        await send({"type": "http.response.start", "status": 201,
                    "headers": [(b"location", location)]})
        await send({"type": "http.response.body", "body": b""})

    def _push(self, method: str, path: str, headers: dict[str, str], body: bytes,
              http_version: str) -> WebPushMessage:
        subscription = self.subscriptions.get(path.removeprefix("/push/"))
        if method != "POST" or not path.startswith("/push/") or subscription is None:
            raise Refusal(404, "no such push subscription")
        if subscription.gone:
            raise Refusal(410, "push subscription expired")
        claims, key = self._check_vapid(headers.get("authorization", ""), subscription)
        ttl = headers.get("ttl", "")
        if not ttl.isdigit():
            raise Refusal(400, "TTL header field missing or not a number")
        urgency = headers.get("urgency", "normal")
        if urgency not in URGENCIES:
            raise Refusal(400, f"unknown Urgency {urgency}")
        topic = headers.get("topic", "")
        if len(topic) > 32 or not TOPIC_CHARACTERS.issuperset(topic):
            raise Refusal(400, "Topic: at most 32 characters of the base64url alphabet")
        plaintext = b""
        if body:
            if headers.get("content-encoding") != "aes128gcm":
                raise Refusal(415, "payload must be Content-Encoding: aes128gcm")
            if len(body) > MAX_PAYLOAD:
                raise Refusal(413, "payload too large")
            plaintext = decrypt(body, subscription.ua_key, subscription.auth_secret)
        return WebPushMessage(subscription.id, plaintext, int(ttl), urgency, topic, claims, key,
                              http_version)

    def _check_vapid(self, authorization: str, subscription: Subscription
                     ) -> tuple[dict[str, Any], str]:
        scheme, _, parameters = authorization.partition(" ")
        if scheme.lower() != "vapid":
            raise Refusal(401, "vapid authentication required")
        values = dict(part.strip().partition("=")[::2] for part in parameters.split(","))
        token, key = values.get("t", ""), values.get("k", "")
        try:
            public_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(),
                                                                      b64url_decode(key))
        except ValueError:
            raise Refusal(403, "k is not a P-256 public key") from None
        if subscription.application_server_key not in (None, key):
            raise Refusal(403, "k is not the key the subscription is restricted to")
        try:
            if jwt.get_unverified_header(token).get("alg") != "ES256":
                raise Refusal(403, "VAPID JWT must be ES256")
            claims = jwt.decode(token, public_key, algorithms=["ES256"], audience=self.origin,
                                options={"require": ["aud", "exp", "sub"]})
        except jwt.PyJWTError as error:
            raise Refusal(403, f"VAPID JWT: {error}") from None
        if claims["exp"] > time.time() + MAX_VAPID_LIFETIME:
            raise Refusal(403, "VAPID JWT expires more than 24 hours ahead")
        if not str(claims["sub"]).startswith(("mailto:", "https:")):
            raise Refusal(403, "VAPID sub must be a mailto: or https: URI")
        return claims, key


def decrypt(body: bytes, ua_key: ec.EllipticCurvePrivateKey, auth_secret: bytes) -> bytes:
    """RFC 8291 section 3.4 / RFC 8188 section 2: the user agent's side of aes128gcm."""
    if len(body) < 21:
        raise Refusal(400, "aes128gcm header truncated")
    salt = body[:16]
    record_size, id_length = struct.unpack("!IB", body[16:21])
    sender_key = body[21:21 + id_length]
    ciphertext = body[21 + id_length:]
    if id_length != 65 or len(ciphertext) > record_size or record_size < 18:
        raise Refusal(400, "a Web Push payload is one record whose keyid is the sender's "
                           "P-256 key (RFC 8291 section 4)")
    try:
        as_public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), sender_key)
    except ValueError:
        raise Refusal(400, "keyid is not a P-256 point") from None
    shared = ua_key.exchange(ec.ECDH(), as_public)
    key_info = b"WebPush: info\x00" + _point(ua_key.public_key()) + sender_key
    ikm = HKDF(hashes.SHA256(), 32, salt=auth_secret, info=key_info).derive(shared)
    cek = HKDF(hashes.SHA256(), 16, salt=salt, info=b"Content-Encoding: aes128gcm\x00"
               ).derive(ikm)
    nonce = HKDF(hashes.SHA256(), 12, salt=salt, info=b"Content-Encoding: nonce\x00"
                 ).derive(ikm)
    try:
        padded = AESGCM(cek).decrypt(nonce, ciphertext, None)
    except InvalidTag:
        raise Refusal(400, "payload does not decrypt with the subscription's keys") from None
    plaintext = padded.rstrip(b"\x00")
    if not plaintext.endswith(b"\x02"):
        raise Refusal(400, "the only record must end with the last-record delimiter 0x02")
    return plaintext[:-1]
