"""Web Push (RFC 8030): wakes a browser or PWA's service worker (RFC 8599 `pn-provider=webpush`).

What a binding carries:
- `pn-prid` is the push subscription URI (PushSubscription.endpoint), as RFC 8599 defines it
  for RFC 8030. RFC 8599 gives webpush no `pn-param`, and a push to such a binding has no
  payload: the service worker wakes, registers, and the call arrives over SIP.
- ws2sip's extension: `pn-param=<p256dh>.<auth>`, the subscription's two keys
  (PushSubscription.getKey("p256dh") and getKey("auth"), base64url as the Push API's toJSON()
  gives them). With them the push carries the call's details (kind, call_id, caller, callee as
  JSON), encrypted to the browser alone (RFC 8291, aes128gcm), so the service worker can show
  who is calling before it has registered.

A binding without keys still gets the call's cancel: the push service replaces the call's push
with it if it still holds that (same Topic), and a browser it wakes finds no call waiting.

Every push is signed with VAPID (RFC 8292): an ES256 JWT whose `aud` is the push service's
origin, `exp` at most 24 hours ahead and `sub` the operator's contact, sent as
`Authorization: vapid t=<jwt>, k=<public key>`. The public key is also what the registrar
announces in `+sip.vapid` (`vapid_public_key`) and what the web app passes to
PushManager.subscribe() as applicationServerKey, so that only this server can push to the
subscription.

Encryption uses http-ece (web-push-libs' implementation of RFC 8188 with RFC 8291's key
derivation, the one pywebpush uses); pywebpush itself was not used because it sends with
requests (blocking) or aiohttp (no HTTP/2).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import ssl
import time
from pathlib import Path
from urllib.parse import urlsplit

import http_ece
import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..config import ConfigError, PushSettings
from ..logsafe import loggable
from .provider import PushOutcome, PushRequest, PushResult, PushTarget

NAME = "webpush"
REQUEST_TIMEOUT = 10.0
VAPID_LIFETIME = 12 * 3600  # RFC 8292 allows at most 24 hours
VAPID_RENEW_BEFORE = 3600  # sign a new JWT for an origin when its own has less than this left
MAX_CACHED_ORIGINS = 256  # browsers use a handful of push services
DEFAULT_TTL = 30  # seconds the push service keeps the message: a call does not wait longer
MAX_FIELD_CHARS = 256  # caller and callee: the payload stays one record (RFC 8291 section 4)
P256_POINT_BYTES = 65  # an uncompressed P-256 public key (RFC 8291 section 3.1)
AUTH_SECRET_BYTES = 16


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_vapid_key(path: str) -> ec.EllipticCurvePrivateKey:
    """The VAPID signing key: a P-256 private key in PEM, as
    `openssl ecparam -name prime256v1 -genkey -noout -out vapid.pem` writes it."""
    where = f"push.webpush_vapid_key_file {path}"
    try:
        key = serialization.load_pem_private_key(Path(path).expanduser().read_bytes(),
                                                 password=None)
    except (OSError, ValueError, TypeError) as error:
        raise ConfigError(f"{where}: {error}") from error
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve,
                                                                         ec.SECP256R1):
        raise ConfigError(f"{where}: not a P-256 (prime256v1) EC key")
    return key


def vapid_public_key(key: ec.EllipticCurvePrivateKey) -> str:
    """The value of the `+sip.vapid` feature-capability indicator (RFC 8599) and of VAPID's
    `k=`: the public key as an uncompressed point, base64url without padding. The registrar
    puts it in quotes in Feature-Caps: `+sip.vapid="<this>"`."""
    return b64url(key.public_key().public_bytes(serialization.Encoding.X962,
                                                serialization.PublicFormat.UncompressedPoint))


class WebPushProvider:
    """One VAPID identity sending to any push service (each origin gets its own HTTP/2
    connection from the client's pool, and its own cached VAPID JWT)."""

    name = NAME

    def __init__(self, vapid_key: ec.EllipticCurvePrivateKey, subject: str, *,
                 verify: ssl.SSLContext | bool = True, ttl: int = DEFAULT_TTL) -> None:
        if not subject.startswith(("mailto:", "https:")):
            raise ConfigError(f"push.webpush_subject {subject!r}: expected a mailto: or https: "
                              "URI a push service can contact the operator at (RFC 8292)")
        self._vapid_key = vapid_key
        self.vapid_public_key = vapid_public_key(vapid_key)  # +sip.vapid
        self._subject = subject
        self._client = httpx.AsyncClient(http2=True, verify=verify, timeout=REQUEST_TIMEOUT)
        self._ttl = ttl
        self._jwt_by_origin: dict[str, tuple[str, float]] = {}  # origin: (JWT, renew at)

    @classmethod
    def from_settings(cls, settings: PushSettings, verify: ssl.SSLContext
                      ) -> WebPushProvider | None:
        """The provider [push] describes, or None when Web Push is not configured (a
        gateway.push.service ProviderFactory)."""
        if not settings.webpush_vapid_key_file:
            return None
        try:
            # No point delivering a wake-up after the call stopped waiting for it.
            return cls(load_vapid_key(settings.webpush_vapid_key_file), settings.webpush_subject,
                       verify=verify, ttl=max(1, round(settings.wait)))
        except ConfigError as error:
            raise SystemExit(f"ws2sip: {error}") from error  # as an unusable APNs key is

    async def send(self, target: PushTarget, request: PushRequest) -> PushResult:
        origin = push_service_origin(target.prid)
        if not origin:
            return PushResult(PushOutcome.INVALID_TOKEN,
                              f"Web Push pn-prid {loggable(target.prid)!r} is not an https "
                              "push subscription URI")
        headers = {
            "Authorization": f"vapid t={self._vapid_jwt(origin)}, k={self.vapid_public_key}",
            "TTL": str(self._ttl),
            "Urgency": "high",
            # One topic per call: a cancel replaces its call's push while the push service still
            # holds it (RFC 8030 section 5.4), so a browser coming online late is not rung.
            "Topic": call_topic(request.call_id),
        }
        body = b""
        if target.param:
            try:
                body = encrypt_payload(_payload(request), target.param)
            except ValueError as error:
                return PushResult(PushOutcome.INVALID_TOKEN,
                                  f"Web Push pn-param is not <p256dh>.<auth>: {error}")
            headers["Content-Encoding"] = "aes128gcm"
            headers["Content-Type"] = "application/octet-stream"
        try:
            response = await self._client.post(target.prid, content=body, headers=headers)
        except httpx.HTTPError as error:
            return PushResult(PushOutcome.FAILED, f"Web Push {origin} unreachable: "
                              f"{type(error).__name__}: {loggable(str(error))}")
        if response.status_code in (200, 201, 202):
            return PushResult(PushOutcome.SENT)
        reason = f"Web Push {origin} {response.status_code}: {loggable(response.text)}"
        if response.status_code in (404, 410):  # RFC 8030 section 7.3: the subscription is gone
            return PushResult(PushOutcome.INVALID_TOKEN, reason)
        return PushResult(PushOutcome.FAILED, reason)

    async def close(self) -> None:
        await self._client.aclose()

    def _vapid_jwt(self, origin: str) -> str:
        now = time.time()
        cached = self._jwt_by_origin.get(origin)
        if cached is not None and now < cached[1]:
            return cached[0]
        if len(self._jwt_by_origin) >= MAX_CACHED_ORIGINS:
            # Clients name the origins: a flood of made-up ones must not grow this for ever.
            self._jwt_by_origin.clear()
        expires = int(now) + VAPID_LIFETIME
        token = jwt.encode({"aud": origin, "exp": expires, "sub": self._subject},
                           self._vapid_key, algorithm="ES256")
        self._jwt_by_origin[origin] = (token, expires - VAPID_RENEW_BEFORE)
        return token


def push_service_origin(endpoint: str) -> str:
    """The origin (RFC 6454 serialization) of an https push subscription URI, the VAPID JWT's
    `aud`; "" for anything else."""
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError:
        return ""
    host = parts.hostname
    if parts.scheme != "https" or not host:
        return ""
    shown_host = f"[{host}]" if ":" in host else host
    return f"https://{shown_host}" + (f":{port}" if port not in (None, 443) else "")


def call_topic(call_id: str) -> str:
    """RFC 8030's Topic for a call: at most 32 base64url characters, the same for the call's
    pushes and its cancel, revealing nothing of the Call-ID to the push service."""
    return b64url(hashlib.sha256(call_id.encode()).digest()[:24])


def _payload(request: PushRequest) -> bytes:
    return json.dumps({
        "kind": request.kind.value,
        "call_id": request.call_id,
        "caller": request.caller[:MAX_FIELD_CHARS],
        "callee": request.callee[:MAX_FIELD_CHARS],
    }).encode()


def encrypt_payload(plaintext: bytes, keys: str, *, salt: bytes | None = None,
                    sender_key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    """plaintext encrypted to the user agent's keys `<p256dh>.<auth>` (RFC 8291): a new ECDH key
    of ours and a random salt (unless given: RFC 8291's test vector), one aes128gcm record.
    ValueError names what is wrong with `keys`."""
    p256dh_text, dot, auth_text = keys.partition(".")
    try:
        p256dh, auth = b64url_decode(p256dh_text), b64url_decode(auth_text)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"not base64url: {error}") from error
    if not dot or len(p256dh) != P256_POINT_BYTES or len(auth) != AUTH_SECRET_BYTES:
        raise ValueError(f"expected a {P256_POINT_BYTES}-byte key and a {AUTH_SECRET_BYTES}-byte "
                         f"secret, got {len(p256dh)} and {len(auth)} bytes")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), p256dh)
    except ValueError as error:
        raise ValueError(f"p256dh is not a P-256 point: {error}") from error
    return http_ece.encrypt(plaintext, salt=salt or os.urandom(16),
                            private_key=sender_key or ec.generate_private_key(ec.SECP256R1()),
                            dh=p256dh, auth_secret=auth, version="aes128gcm")
