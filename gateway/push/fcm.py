"""Firebase Cloud Messaging, HTTP v1 API: wakes an Android app (RFC 8599 `pn-provider=fcm`).

- `pn-prid` is the app's FCM registration token; `pn-param` is the Firebase project id, as
  RFC 8599 defines them for FCM (without one, the service account's own project).
- Authentication is OAuth 2.0 for a service account (RFC 7523): an RS256 JWT signed with the
  account's key is exchanged at its `token_uri` for a bearer access token, which is kept until
  shortly before it expires. One exchange at a time: pushes that find no token wait for it.
- A push is `POST {fcm_url}/v1/projects/{project}/messages:send` with a data message at
  Android priority HIGH (a notification message would not start the app's code; only HIGH wakes
  a dozing device). The data fields name the call: kind, call_id, caller, callee. The call's
  pushes and its cancel share a collapse key.

google-auth was not used: its service-account flow is synchronous (requests) and would block
the event loop or need a thread per refresh; PyJWT signs the same assertion in a few lines, and
the exchange goes over the same HTTP/2 client as the pushes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ..config import ConfigError, PushSettings
from ..logsafe import loggable
from .provider import PushOutcome, PushRequest, PushResult, PushTarget

NAME = "fcm"
FCM_URL = "https://fcm.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME = 3600  # Google accepts at most an hour
# Fetch a new token this long before the old one expires (a push must not carry a token that
# expires on its way), but never later than halfway through a short-lived one.
REFRESH_MARGIN = 60.0
DEFAULT_TTL = 30  # seconds FCM keeps trying to deliver: a call does not wait longer
REQUEST_TIMEOUT = 10.0
# Google Cloud project ids: 6-30 lowercase letters, digits and hyphens, starting with a letter,
# not ending with a hyphen (some legacy ones are longer).
PROJECT_ID = re.compile(r"[a-z][a-z0-9-]{4,61}[a-z0-9]")
MAX_FIELD_CHARS = 256  # caller and callee in the data message; FCM's limit is 4 KB in all


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """The fields of a Firebase service-account JSON key file that the HTTP v1 API needs."""

    project_id: str
    client_email: str
    private_key_id: str
    private_key: rsa.RSAPrivateKey
    token_uri: str

    @classmethod
    def load(cls, path: str) -> ServiceAccount:
        where = f"push.fcm_service_account {path}"
        try:
            raw = json.loads(Path(path).expanduser().read_text())
        except (OSError, ValueError) as error:
            raise ConfigError(f"{where}: {error}") from error
        if not isinstance(raw, dict) or raw.get("type") != "service_account":
            raise ConfigError(f"{where}: not a service-account key file "
                              "(expected \"type\": \"service_account\")")
        missing = [key for key in ("project_id", "client_email", "private_key", "token_uri")
                   if not isinstance(raw.get(key), str) or not raw[key]]
        if missing:
            raise ConfigError(f"{where}: missing {', '.join(missing)}")
        try:
            key = serialization.load_pem_private_key(raw["private_key"].encode(), password=None)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"{where}: private_key: {error}") from error
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigError(f"{where}: private_key is not an RSA key")
        return cls(project_id=raw["project_id"], client_email=raw["client_email"],
                   private_key_id=str(raw.get("private_key_id", "")), private_key=key,
                   token_uri=raw["token_uri"])


class _TokenError(Exception):
    """The token endpoint refused the assertion or could not be reached."""


class FcmProvider:
    """One FCM HTTP v1 sender: a service account, its cached access token and one HTTP/2
    client (the token endpoint and FCM each get their own connection from its pool)."""

    name = NAME

    def __init__(self, account: ServiceAccount, *, fcm_url: str = FCM_URL,
                 verify: ssl.SSLContext | bool = True, ttl: int = DEFAULT_TTL) -> None:
        self.account = account
        self._client = httpx.AsyncClient(http2=True, verify=verify, timeout=REQUEST_TIMEOUT)
        self._fcm_url = fcm_url.rstrip("/")
        self._ttl = ttl
        self._token = ""
        self._token_refresh_at = 0.0  # time.monotonic() after which the token is renewed
        self._token_lock = asyncio.Lock()
        self._exchanges = 0  # token exchanges finished, refused or not
        self._exchange_error: _TokenError | None = None  # how the last one failed

    @classmethod
    def from_settings(cls, settings: PushSettings, verify: ssl.SSLContext
                      ) -> FcmProvider | None:
        """The provider [push] describes, or None when FCM is not configured (a
        gateway.push.service ProviderFactory)."""
        if not settings.fcm_service_account:
            return None
        try:
            account = ServiceAccount.load(settings.fcm_service_account)
        except ConfigError as error:
            raise SystemExit(f"ws2sip: {error}") from error  # as an unusable APNs key is
        # No point delivering a wake-up after the call stopped waiting for it.
        return cls(account, fcm_url=settings.fcm_url, verify=verify,
                   ttl=max(1, round(settings.wait)))

    async def send(self, target: PushTarget, request: PushRequest) -> PushResult:
        project = target.param or self.account.project_id
        if not PROJECT_ID.fullmatch(project):
            # It goes into the request's path: nothing but a project id may.
            return PushResult(PushOutcome.INVALID_TOKEN,
                              f"FCM pn-param {loggable(project)!r} is not a Firebase project id")
        try:
            token = await self._access_token()
            response = await self._post_message(project, target.prid, request, token)
            if response.status_code == 401:
                # Revoked or expired early (a clock step): one new token, one more try. Only
                # this token is forgotten: another push may have fetched the next one already.
                if self._token == token:
                    self._token = ""
                token = await self._access_token()
                response = await self._post_message(project, target.prid, request, token)
        except _TokenError as error:
            return PushResult(PushOutcome.FAILED, f"FCM OAuth token: {error}")
        except httpx.HTTPError as error:
            return PushResult(PushOutcome.FAILED, f"FCM unreachable: {_describe(error)}")
        if response.status_code == 200:
            return PushResult(PushOutcome.SENT)
        return _failure(response)

    async def close(self) -> None:
        await self._client.aclose()

    async def _post_message(self, project: str, registration_token: str,
                            request: PushRequest, access_token: str) -> httpx.Response:
        message = {
            "message": {
                "token": registration_token,
                "data": {
                    "kind": request.kind.value,
                    "call_id": request.call_id,
                    "caller": request.caller[:MAX_FIELD_CHARS],
                    "callee": request.callee[:MAX_FIELD_CHARS],
                },
                # One collapse key per call: a cancel replaces its call's message while FCM
                # still holds it for an offline device, which then is not rung late.
                "android": {"priority": "HIGH", "ttl": f"{self._ttl}s",
                            "collapse_key": _collapse_key(request.call_id)},
            },
        }
        return await self._client.post(
            f"{self._fcm_url}/v1/projects/{project}/messages:send", json=message,
            headers={"Authorization": f"Bearer {access_token}"},
        )

    async def _access_token(self) -> str:
        if self._token and time.monotonic() < self._token_refresh_at:
            return self._token
        exchanges_before = self._exchanges
        async with self._token_lock:
            # Another push may have fetched one while this one waited for the lock; or failed
            # to, and then this push fails with it rather than queue another exchange (pushes
            # for a burst of calls would otherwise wait for one timeout each).
            if self._token and time.monotonic() < self._token_refresh_at:
                return self._token
            if self._exchanges != exchanges_before and self._exchange_error is not None:
                raise self._exchange_error
            try:
                self._token, lifetime = await self._fetch_token()
            except _TokenError as error:
                self._exchange_error = error
                raise
            finally:
                self._exchanges += 1
            self._exchange_error = None
            self._token_refresh_at = (time.monotonic() + lifetime
                                      - min(REFRESH_MARGIN, lifetime / 2))
            return self._token

    async def _fetch_token(self) -> tuple[str, float]:
        now = int(time.time())
        assertion = jwt.encode(
            {"iss": self.account.client_email, "scope": SCOPE, "aud": self.account.token_uri,
             "iat": now, "exp": now + ASSERTION_LIFETIME},
            self.account.private_key, algorithm="RS256",
            headers={"kid": self.account.private_key_id} if self.account.private_key_id else None,
        )
        try:
            response = await self._client.post(
                self.account.token_uri,
                data={"grant_type": JWT_BEARER_GRANT, "assertion": assertion},
            )
        except httpx.HTTPError as error:
            raise _TokenError(f"{self.account.token_uri} unreachable: {_describe(error)}") \
                from error
        body = _json_object(response)
        token, lifetime = body.get("access_token"), body.get("expires_in")
        if (response.status_code != 200 or not isinstance(token, str) or not token
                or not isinstance(lifetime, int | float) or lifetime <= 0):
            detail = body.get("error_description") or body.get("error") or response.text
            raise _TokenError(f"{response.status_code} {loggable(detail)}")
        return token, float(lifetime)


def _collapse_key(call_id: str) -> str:
    """The same for a call's pushes and its cancel; shows FCM nothing of the Call-ID."""
    return base64.urlsafe_b64encode(hashlib.sha256(call_id.encode()).digest()[:24]).decode()


def _failure(response: httpx.Response) -> PushResult:
    """What an FCM error answer means for the binding (google.rpc.Status with FcmError and
    BadRequest details: firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode)."""
    error = _json_object(response).get("error")
    error = error if isinstance(error, dict) else {}
    status = str(error.get("status", ""))
    details = [d for d in error.get("details", []) if isinstance(d, dict)] \
        if isinstance(error.get("details"), list) else []
    fcm_code = next((str(d["errorCode"]) for d in details
                     if str(d.get("@type", "")).endswith("FcmError") and "errorCode" in d), "")
    bad_fields = {str(v.get("field")) for d in details
                  for v in (d.get("fieldViolations") or []) if isinstance(v, dict)}
    code = fcm_code or status or "no error code"
    reason = f"FCM {response.status_code} {code}: {loggable(error.get('message', response.text))}"
    token_gone = fcm_code == "UNREGISTERED"
    token_malformed = "INVALID_ARGUMENT" in (fcm_code, status) and "message.token" in bad_fields
    if token_gone or token_malformed:
        return PushResult(PushOutcome.INVALID_TOKEN, reason)
    return PushResult(PushOutcome.FAILED, reason)


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {loggable(str(error)) or 'no detail'}"
