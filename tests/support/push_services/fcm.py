"""A stand-in for Firebase Cloud Messaging's HTTP v1 API and Google's OAuth 2.0 token endpoint,
checking what they check.

Token endpoint (`POST /token`, Google's "Using OAuth 2.0 for Server to Server Applications"):
- form-encoded `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` and `assertion`;
- the assertion an RS256 JWT signed by the service account's key (checked against its public
  half; header `kid` its private_key_id), `iss` the account's email, `scope` naming
  firebase.messaging, `aud` this token URI, `iat`/`exp` at most an hour apart and current;
- else 400 `{"error": "invalid_grant" | "unsupported_grant_type" | "invalid_scope", ...}`;
- answers `{"access_token", "expires_in", "token_type": "Bearer"}`.

messages:send (`POST /v1/projects/<project>/messages:send`, FCM's REST reference and its
ErrorCode list), errors as google.rpc.Status with FcmError / BadRequest details:
- `Authorization: Bearer <a token this stand-in issued, unexpired>`, else 401 UNAUTHENTICATED;
- the path's project the service account's, else 403 PERMISSION_DENIED (SENDER_ID_MISMATCH);
- JSON `{"message": {...}}` with exactly one target `token`, `data` a map of strings to strings
  without reserved keys, `android.priority` NORMAL/HIGH, `android.ttl` like "30s",
  `android.collapse_key` a string, else 400 INVALID_ARGUMENT naming the field;
- registration tokens marked unregistered: 404 NOT_FOUND with FcmError UNREGISTERED;
- `fail_next`: answers the next sends with that status (500 INTERNAL, 503 UNAVAILABLE...).

Only HTTP/2 is served (hypercorn with ALPN h2 only); each accepted message is recorded with
the HTTP version it came over.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.push_services.server import Receive, Send, http_request_body

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MAX_ASSERTION_LIFETIME = 3600
RESERVED_DATA_KEYS = ("from", "notification", "message_type")
RESERVED_DATA_PREFIXES = ("google", "gcm")
TTL_FORMAT = re.compile(r"\d+(\.\d{1,9})?s")
STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                503: "UNAVAILABLE"}
FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"



def service_account_file(project_id: str, token_uri: str, key: rsa.RSAPrivateKey,
                         private_key_id: str) -> dict[str, str]:
    """A service-account key file's content, as the Firebase console gives it."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": private_key_id,
        "private_key": pem,
        "client_email": f"firebase-adminsdk@{project_id}.iam.gserviceaccount.com",
        "client_id": "100000000000000000000",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    }


@dataclass(frozen=True)
class FcmMessage:
    """One accepted message."""

    project: str
    token: str
    data: dict[str, str]
    android: dict[str, Any]
    access_token: str
    http_version: str


class FcmRefusal(Exception):
    def __init__(self, status: int, message: str, *, fcm_code: str = "",
                 bad_field: str = "") -> None:
        super().__init__(f"{status} {fcm_code or STATUS_NAMES.get(status, '')}: {message}")
        self.status = status
        self.message = message
        self.fcm_code = fcm_code
        self.bad_field = bad_field

    def body(self) -> dict[str, Any]:
        details: list[dict[str, Any]] = []
        if self.fcm_code:
            details.append({"@type": FCM_ERROR, "errorCode": self.fcm_code})
        if self.bad_field:
            details.append({"@type": BAD_REQUEST, "fieldViolations": [
                {"field": self.bad_field, "description": self.message}]})
        error: dict[str, Any] = {"code": self.status, "message": self.message,
                                 "status": STATUS_NAMES.get(self.status, "UNKNOWN")}
        if details:
            error["details"] = details
        return {"error": error}


@dataclass
class FcmStandIn:
    """The ASGI app for one service account (`create` makes both). `token_uri`, this app's
    /token, is set once the server listens: the account's assertions must name it as `aud`."""

    project_id: str
    private_key_id: str
    public_key: rsa.RSAPublicKey
    token_uri: str = ""
    token_lifetime: int = 3600
    unregistered: set[str] = field(default_factory=set)
    fail_next: list[int] = field(default_factory=list)  # statuses for the next sends, in order
    tokens: dict[str, float] = field(default_factory=dict)  # access token: expiry (time.time)
    token_requests: int = 0  # exchanges tried, refused ones included
    assertions: list[dict[str, Any]] = field(default_factory=list)  # accepted JWT claims
    messages: list[FcmMessage] = field(default_factory=list)
    refusals: list[tuple[int, str]] = field(default_factory=list)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    @classmethod
    def create(cls, project_id: str) -> tuple[FcmStandIn, rsa.RSAPrivateKey]:
        """A stand-in for a new service account of `project_id`, and the account's key."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(project_id, secrets.token_hex(20), key.public_key()), key

    @property
    def client_email(self) -> str:
        return f"firebase-adminsdk@{self.project_id}.iam.gserviceaccount.com"

    def service_account(self, key: rsa.RSAPrivateKey) -> dict[str, str]:
        """The account's key file, signing with `key` (the account's own, or an impostor's)."""
        return service_account_file(self.project_id, self.token_uri, key, self.private_key_id)

    def revoke_tokens(self) -> None:
        self.tokens.clear()

    async def wait_for_messages(self, count: int, timeout: float = 10.0) -> list[FcmMessage]:
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
        path = scope["path"]
        if scope["method"] == "POST" and path == "/token":
            status, answer = self._token(headers, body)
        elif scope["method"] == "POST" and path.startswith("/v1/projects/") and \
                path.endswith("/messages:send"):
            project = path.removeprefix("/v1/projects/").removesuffix("/messages:send")
            try:
                accepted = self._send(project, headers, body, scope["http_version"])
            except FcmRefusal as refusal:
                self.refusals.append((refusal.status, refusal.fcm_code or refusal.message))
                status, answer = refusal.status, refusal.body()
            else:
                self.messages.append(accepted)
                async with self.arrived:
                    self.arrived.notify_all()
                status = 200
                answer = {"name": f"projects/{project}/messages/{secrets.token_hex(8)}"}
        else:
            status, answer = 404, FcmRefusal(404, f"no such resource {path}").body()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json; charset=UTF-8")]})
        await send({"type": "http.response.body", "body": json.dumps(answer).encode()})

    def _token(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        self.token_requests += 1
        if not headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return 400, {"error": "invalid_request", "error_description": "form body expected"}
        form = {key: values[0] for key, values in parse_qs(body.decode()).items()}
        if form.get("grant_type") != JWT_BEARER_GRANT:
            return 400, {"error": "unsupported_grant_type",
                         "error_description": "Invalid grant_type"}
        assertion = form.get("assertion", "")
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(assertion, self.public_key, algorithms=["RS256"],
                                audience=self.token_uri,
                                options={"require": ["iss", "scope", "aud", "iat", "exp"]})
        except jwt.PyJWTError as error:
            return 400, {"error": "invalid_grant", "error_description": f"Invalid JWT: {error}"}
        if header.get("kid") != self.private_key_id or claims["iss"] != self.client_email:
            return 400, {"error": "invalid_grant",
                         "error_description": "Invalid JWT Signature."}
        if SCOPE not in str(claims["scope"]).split():
            return 400, {"error": "invalid_scope", "error_description": "No firebase scope"}
        if not 0 < claims["exp"] - claims["iat"] <= MAX_ASSERTION_LIFETIME or \
                claims["iat"] > time.time() + 60:
            return 400, {"error": "invalid_grant",
                         "error_description": "Invalid JWT: Token must be a short-lived token "
                                              "(60 minutes) and in a reasonable timeframe."}
        self.assertions.append(claims)
        access_token = "ya29.standin-" + secrets.token_urlsafe(24)
        self.tokens[access_token] = time.time() + self.token_lifetime
        return 200, {"access_token": access_token, "expires_in": self.token_lifetime,
                     "token_type": "Bearer"}

    def _send(self, project: str, headers: dict[str, str], body: bytes,
              http_version: str) -> FcmMessage:
        authorization = headers.get("authorization", "")
        access_token = authorization.removeprefix("Bearer ")
        if not authorization.startswith("Bearer ") or \
                self.tokens.get(access_token, 0.0) < time.time():
            raise FcmRefusal(401, "Request had invalid authentication credentials. Expected "
                                  "OAuth 2 access token.")
        if project != self.project_id:
            raise FcmRefusal(403, "SenderId mismatch", fcm_code="SENDER_ID_MISMATCH")
        if self.fail_next:
            status = self.fail_next.pop(0)
            raise FcmRefusal(status, "The service is currently unavailable."
                             if status == 503 else "Internal error encountered.",
                             fcm_code=STATUS_NAMES.get(status, "UNSPECIFIED_ERROR"))
        try:
            message = json.loads(body)["message"]
        except (ValueError, KeyError, TypeError):
            raise FcmRefusal(400, "Invalid JSON payload received.") from None
        if not isinstance(message, dict):
            raise FcmRefusal(400, "message must be an object", bad_field="message")
        token = message.get("token")
        if sum(key in message for key in ("token", "topic", "condition")) != 1:
            raise FcmRefusal(400, "exactly one of token, topic, condition", bad_field="message")
        if not isinstance(token, str) or not token or not token.isprintable() or " " in token:
            raise FcmRefusal(400, "The registration token is not a valid FCM registration "
                                  "token", fcm_code="INVALID_ARGUMENT", bad_field="message.token")
        data = message.get("data", {})
        if not isinstance(data, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise FcmRefusal(400, "data values must be strings", fcm_code="INVALID_ARGUMENT",
                             bad_field="message.data")
        if any(k in RESERVED_DATA_KEYS or k.startswith(RESERVED_DATA_PREFIXES) for k in data):
            raise FcmRefusal(400, "reserved data key", fcm_code="INVALID_ARGUMENT",
                             bad_field="message.data")
        android = message.get("android", {})
        if not isinstance(android, dict) or \
                android.get("priority", "NORMAL") not in ("NORMAL", "HIGH") or \
                not TTL_FORMAT.fullmatch(str(android.get("ttl", "0s"))) or \
                not isinstance(android.get("collapse_key", ""), str):
            raise FcmRefusal(400, "Invalid android config", fcm_code="INVALID_ARGUMENT",
                             bad_field="message.android")
        if token in self.unregistered:
            raise FcmRefusal(404, "Requested entity was not found.", fcm_code="UNREGISTERED")
        return FcmMessage(project, token, data, android, access_token, http_version)
