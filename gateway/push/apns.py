"""APNs (Apple Push Notification service) over HTTP/2 with token-based authentication.

What an iOS app registers (RFC 8599 §10 of the APNs PNS): `pn-provider=apns`,
`pn-prid=<its PushKit VoIP device token, hex>`, `pn-param=<team id>.<bundle id>.voip`.

Each push is `POST <apns_url>/3/device/<token>` with
- `authorization: bearer <JWT>`: ES256, header `kid` (the key id), claims `iss` (the team id)
  and `iat`; signed with the .p8 key. APNs refuses a token older than an hour and one renewed
  more often than every 20 minutes, so one is kept and renewed after TOKEN_RENEW seconds;
- `apns-push-type: voip`, `apns-topic: <bundle id>.voip` (pn-param without the team id),
  `apns-priority: 10` (at once), `apns-expiration` (a UNIX time: after it APNs stops trying;
  the caller would be gone);
- the payload (VoIP pushes go to PushKit, which hands the app the whole dictionary):

      {"aps": {}, "ws2sip": {"type": "call" | "cancel" | "message",
                             "call-id": "<the request's Call-ID>",
                             "from": "<caller>", "to": "<callee AoR>"}}

  "call": register now, a call waits (report it to CallKit); "cancel": the call with that
  Call-ID is over (end it in CallKit); "message": a MESSAGE waits.

Answers: 200 is SENT; 410 (Unregistered, ExpiredToken) and 400 BadDeviceToken are
INVALID_TOKEN; 403 ExpiredProviderToken renews the token and tries once more; anything else is
FAILED with APNs' status and reason.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from pathlib import Path

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from .provider import PushOutcome, PushRequest, PushResult, PushTarget

log = logging.getLogger(f"ws2sip.{__name__}")

NAME = "apns"
TOKEN_RENEW = 50 * 60  # seconds: APNs wants a token younger than 60 min, renewed at most
# every 20 min
REQUEST_TIMEOUT = 10.0
DEFAULT_EXPIRATION = 30  # seconds APNs keeps trying to deliver a push
INVALID_TOKEN_REASONS = ("BadDeviceToken", "Unregistered", "ExpiredToken")
VOIP_SUFFIX = ".voip"


class ApnsConfigError(ValueError):
    """The key file cannot be used (missing, not a PEM EC P-256 key)."""


def load_signing_key(path: str) -> ec.EllipticCurvePrivateKey:
    """The .p8 file Apple hands out: a PKCS#8 PEM P-256 private key."""
    try:
        key = load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise ApnsConfigError(f"push.apns_key_file {path}: {error}") from error
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ApnsConfigError(f"push.apns_key_file {path}: not an EC P-256 key (ES256)")
    return key


def topic_of(pn_param: str) -> str | None:
    """`<team id>.<bundle id>.voip` → `<bundle id>.voip`; None when it has not that shape."""
    team, dot, topic = pn_param.partition(".")
    if not team or not dot or not topic.endswith(VOIP_SUFFIX) or topic == VOIP_SUFFIX[1:]:
        return None
    return topic


class ApnsProvider:
    name = NAME

    def __init__(
        self, *, url: str, key: ec.EllipticCurvePrivateKey, key_id: str, team_id: str,
        verify: ssl.SSLContext | bool = True, expiration: int = DEFAULT_EXPIRATION,
    ) -> None:
        self._base = url.rstrip("/")
        self._key = key
        self._key_id = key_id
        self._team_id = team_id
        self._expiration = expiration
        self._token = ""
        self._token_issued = 0.0
        # One HTTP/2 connection, multiplexing every push (what Apple asks of providers).
        self._client = httpx.AsyncClient(http2=True, verify=verify, timeout=REQUEST_TIMEOUT)

    def provider_token(self) -> str:
        """The JWT for `authorization`, renewed once it is TOKEN_RENEW seconds old."""
        now = time.time()
        if not self._token or now - self._token_issued >= TOKEN_RENEW:
            self._token = jwt.encode(
                {"iss": self._team_id, "iat": int(now)}, self._key, algorithm="ES256",
                headers={"kid": self._key_id},
            )
            self._token_issued = now
        return self._token

    async def send(self, target: PushTarget, request: PushRequest) -> PushResult:
        token = target.prid.lower()
        if not token or any(c not in "0123456789abcdef" for c in token):
            return PushResult(PushOutcome.INVALID_TOKEN, "pn-prid is not a hex device token")
        topic = topic_of(target.param)
        if topic is None:
            return PushResult(PushOutcome.FAILED,
                              f"pn-param {target.param[:60]!r} is not <team id>.<bundle id>.voip")
        body = json.dumps({"aps": {}, "ws2sip": {
            "type": request.kind.value, "call-id": request.call_id, "from": request.caller,
            "to": request.callee,
        }}, separators=(",", ":")).encode()
        result = await self._post(token, topic, body)
        if result.reason.endswith("ExpiredProviderToken"):
            self._token = ""  # our clock or theirs drifted: a new token, one more try
            result = await self._post(token, topic, body)
        return result

    async def _post(self, token: str, topic: str, body: bytes) -> PushResult:
        headers = {
            "authorization": f"bearer {self.provider_token()}",
            "apns-push-type": "voip",
            "apns-topic": topic,
            "apns-priority": "10",
            "apns-expiration": str(int(time.time()) + self._expiration),
            "content-type": "application/json",
        }
        try:
            response = await self._client.post(f"{self._base}/3/device/{token}",
                                               headers=headers, content=body)
        except httpx.HTTPError as error:
            return PushResult(PushOutcome.FAILED, f"APNs unreachable: {type(error).__name__} "
                                                  f"{error}")
        if response.status_code == 200:
            return PushResult(PushOutcome.SENT)
        reason = _reason(response)
        text = f"APNs {response.status_code} {reason}"
        if response.status_code == 410 or reason in INVALID_TOKEN_REASONS:
            return PushResult(PushOutcome.INVALID_TOKEN, text)
        return PushResult(PushOutcome.FAILED, text)

    async def close(self) -> None:
        await self._client.aclose()


def _reason(response: httpx.Response) -> str:
    try:
        answer = response.json()
    except ValueError:
        return response.text[:80]
    reason = answer.get("reason") if isinstance(answer, dict) else None
    return str(reason) if reason else ""
