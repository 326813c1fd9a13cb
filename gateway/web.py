"""The web phone's HTTP side: the page at `/` (WebSocket upgrades on `/` still reach SIP), its
assets, and `/config.json` with the settings the page needs (WebSocket URL, SIP domain, ICE
servers, and time-limited TURN credentials for a user who proves the SIP password)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

from sip.digest import DigestServer, VerifyOutcome, parse_challenge, parse_credentials
from sip.errors import SipError
from sip.flow import WILDCARD_HOSTS, format_address

from .config import Config
from .logsafe import loggable
from .users import UserStore

log = logging.getLogger(f"ws2sip.{__name__}")

WEBPHONE_DIR = Path(__file__).resolve().parent / "webphone"
BUNDLE_NAME = "phone.bundle.js"
BUNDLE_PATH = WEBPHONE_DIR / "dist" / BUNDLE_NAME
BUILD_COMMAND = "npm ci --prefix gateway/webphone"
# Served as is; the bundle (JsSIP + phone.js) is built by BUILD_COMMAND, never committed.
ASSETS = {
    "/phone.css": (WEBPHONE_DIR / "phone.css", "text/css"),
    f"/{BUNDLE_NAME}": (BUNDLE_PATH, "text/javascript"),
    f"/{BUNDLE_NAME}.map": (BUNDLE_PATH.with_suffix(".js.map"), "application/json"),
}
# The TURN username embeds the SIP user after a colon: keep it to characters that cannot
# smuggle another field in.
TURN_USER = re.compile(r"[A-Za-z0-9._+\-]{1,64}")
# A Host header as a browser sends it: a name or an IP literal, and an optional port.
HOST_HEADER = re.compile(
    r"(?P<name>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]{1,253})(?::(?P<port>\d{1,5}))?"
)
SETTINGS_PATH = "/config.json"
# What the web phone's JsSIP computes (its digest code only does MD5); every user has an MD5 HA1.
SETTINGS_DIGEST_ALGORITHM = "MD5"


@dataclass(frozen=True, slots=True)
class TurnCredentials:
    """TURN REST API credentials (coturn `use-auth-secret`): valid until the expiry in the
    username, checked by coturn with the same shared secret."""

    username: str
    credential: str
    ttl: int


def turn_credentials(secret: str, user: str, ttl: int, now: float) -> TurnCredentials:
    username = f"{int(now) + ttl}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return TurnCredentials(username, base64.b64encode(digest).decode("ascii"), ttl)


def ice_servers(config: Config, user: str | None, now: float) -> list[dict[str, object]]:
    """RTCIceServer dictionaries, ready for `new RTCPeerConnection({iceServers})`; the TURN
    server (with credentials) only for an authenticated user."""
    servers: list[dict[str, object]] = []
    if config.stun_uris:
        servers.append({"urls": list(config.stun_uris)})
    if config.turn_uris and user is not None:
        credentials = turn_credentials(config.turn_secret, user, config.turn_ttl, now)
        servers.append({
            "urls": list(config.turn_uris),
            "username": credentials.username,
            "credential": credentials.credential,
        })
    return servers


class SettingsAuthenticator:
    """HTTP digest (RFC 7616) on /config.json with the SIP users' own HA1 and realm, so that
    only a user who knows a SIP password gets TURN credentials.

    The challenge travels in the JSON body, not in WWW-Authenticate: a 401 with that header
    would make the browser pop up its own password dialog. Nonces are the SIP registrar's kind
    (stateless, signed with the auth secret), so any node of a cluster accepts them.
    """

    def __init__(
        self, users: UserStore, realm: str, secret: bytes, nonce_lifetime: float,
        on_failure: Callable[[str, str], None], is_banned: Callable[[str], bool],
    ) -> None:
        self._users = users
        self._is_banned = is_banned  # source IP banned after repeated failures (edge guard)
        self._realm = realm
        self._digest = DigestServer(realm, secret, nonce_lifetime=nonce_lifetime,
                                    algorithms=(SETTINGS_DIGEST_ALGORITHM,))
        self._on_failure = on_failure  # (source IP, user name): counted toward bans

    def challenge(self) -> dict[str, str]:
        """The fields of a digest challenge, as JsSIP's DigestAuthentication takes them."""
        parsed = parse_challenge(self._digest.challenge()[0])
        return {"realm": parsed.realm, "nonce": parsed.nonce, "opaque": parsed.opaque or "",
                "algorithm": parsed.algorithm, "qop": ",".join(parsed.qop_options)}

    async def user(self, request: web.Request) -> str | None:
        """The authenticated user name; None without credentials; raises HTTPForbidden (with a
        fresh challenge) for credentials that do not verify."""
        header = request.headers.get("Authorization")
        if header is None:
            return None
        if self._is_banned(request.remote or ""):
            # No password guessing here either once SIP (or this page) banned the address.
            raise web.HTTPForbidden(text="address banned after repeated authentication failures\n")
        try:
            credentials = parse_credentials(header)
        except SipError as error:
            raise self._refusal(f"bad Authorization header: {error.reason}") from None
        if credentials.uri != request.path_qs:
            raise self._refusal("digest uri does not match the request")
        record = await self._users.get(credentials.username, self._realm)
        outcome = VerifyOutcome.WRONG
        if record is not None and credentials.realm == self._realm:
            try:
                outcome = self._digest.verify(credentials, request.method,
                                              record.ha1(credentials.algorithm))
            except (KeyError, ValueError):
                outcome = VerifyOutcome.WRONG
        if outcome is VerifyOutcome.OK:
            return credentials.username
        if outcome is VerifyOutcome.STALE:
            raise self._refusal("stale nonce: authenticate again with the new challenge")
        source = request.remote or "?"
        log.warning("%s from %s: wrong credentials for %r", SETTINGS_PATH, source,
                    credentials.username)
        self._on_failure(source, credentials.username)
        raise self._refusal("wrong user name or password")

    def _refusal(self, reason: str) -> web.HTTPForbidden:
        return web.HTTPForbidden(
            text=json.dumps({"error": reason, "turn_challenge": self.challenge()}),
            content_type="application/json", headers={"Cache-Control": "no-store"},
        )


class WebPhoneSite:
    """The routes of one HTTP listener bound to `listen`; `secure` says whether it speaks TLS
    (wss). `settings_auth` guards the TURN credentials (None: no TURN server configured)."""

    def __init__(
        self, config: Config, *, secure: bool, listen: tuple[str, int],
        settings_auth: SettingsAuthenticator | None,
    ) -> None:
        self._config = config
        self._secure = secure
        self._listen = listen
        self._settings_auth = settings_auth
        # Names the page may be reached by: its ws_url may then follow the browser's Host.
        self._known_hosts = {
            name.lower().strip("[]")
            for name in (config.domain, config.public_address, listen[0],
                         *(host for kind in ("ws", "wss") for host, _ in config.listeners()[kind]))
            if name and name not in ("0.0.0.0", "::")
        }

    def add_routes(self, app: web.Application, ws_handler: Handler) -> None:
        if not BUNDLE_PATH.is_file():
            log.warning("web phone not built (%s missing): run `%s`", BUNDLE_PATH, BUILD_COMMAND)

        async def root(request: web.Request) -> web.StreamResponse:
            # sipml5 and Asterisk users point their clients at "/" rather than "/ws".
            if request.headers.get("Upgrade", "").lower() == "websocket":
                return await ws_handler(request)
            return self._page()

        app.router.add_get("/", root)
        app.router.add_get(SETTINGS_PATH, self._settings)
        for route in ASSETS:
            app.router.add_get(route, self._asset)

    def _page(self) -> web.StreamResponse:
        if not BUNDLE_PATH.is_file():
            return web.Response(
                status=503, content_type="text/plain",
                text=f"ws2sip gateway for {self._config.domain}: SIP over WebSocket at /ws.\n"
                f"The web phone is not built: run `{BUILD_COMMAND}` and restart.\n",
            )
        return web.FileResponse(WEBPHONE_DIR / "index.html", headers=_no_cache())

    async def _asset(self, request: web.Request) -> web.StreamResponse:
        path, content_type = ASSETS[request.path]
        if not path.is_file():
            raise web.HTTPServiceUnavailable(
                text=f"{path.name} is missing: run `{BUILD_COMMAND}`\n"
            )
        return web.FileResponse(path, headers={**_no_cache(), "Content-Type": content_type})

    async def _settings(self, request: web.Request) -> web.Response:
        """What the page needs to sign in, for anyone; TURN credentials only with a digest
        Authorization that verifies (else the challenge to compute one)."""
        auth = self._settings_auth
        user = await auth.user(request) if auth is not None else None
        if user is not None and not TURN_USER.fullmatch(user):
            raise web.HTTPBadRequest(
                text=f"user: expected 1-64 of A-Z a-z 0-9 . _ + -, got {loggable(user)}\n"
            )
        settings: dict[str, object] = {
            "ws_url": self._ws_url(request),
            "domain": self._config.domain,
            "ice_servers": ice_servers(self._config, user, time.time()),
            "turn_ttl": self._config.turn_ttl if user is not None else None,
        }
        if auth is not None and user is None:
            settings["turn_challenge"] = auth.challenge()
        # Credentials inside: never cached by the browser or anything in between.
        return web.json_response(settings, headers={"Cache-Control": "no-store"})

    def _ws_url(self, request: web.Request) -> str:
        # A TLS-terminating reverse proxy serves the page over https: the browser then only
        # allows wss://, though this listener itself is plain ws.
        forwarded_tls = request.headers.get("X-Forwarded-Proto", "").lower() == "https"
        scheme = "wss" if self._secure or forwarded_tls else "ws"
        return f"{scheme}://{self._ws_authority(request.headers.get('Host', ''))}/ws"

    def _ws_authority(self, host_header: str) -> str:
        """The Host the browser used when it names this gateway (a reverse proxy's port
        included); otherwise this listener as configured: a forged Host must not steer the page
        (or a cache in between) to another server."""
        match = HOST_HEADER.fullmatch(host_header)
        if match and match["name"].lower().strip("[]") in self._known_hosts:
            return host_header
        host, port = self._listen
        if host in WILDCARD_HOSTS:
            # Not announced_host's loopback: the browser needs a name it can reach.
            host = self._config.public_address or self._config.domain
        return format_address((host, port))


def _no_cache() -> dict[str, str]:
    # The page and its bundle change with every build; revalidate rather than run stale code.
    return {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


class RefusedRequestLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server logger (AppRunner's `logger`): a request that aiohttp refuses before
    any handler runs (oversized or malformed HTTP) is one escaped line, not a traceback per
    attempt; a handler's own failure (a bug: 500) keeps its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger(f"ws2sip.{__name__}.http"), {})

    def exception(self, msg: object, *args: object, exc_info: object = True,
                  **kwargs: object) -> None:
        if not self._refused(logging.INFO, args, exc_info):
            super().exception(msg, *args, exc_info=exc_info, **kwargs)  # type: ignore[arg-type]

    def debug(self, msg: object, *args: object, exc_info: object = None,
              **kwargs: object) -> None:
        # aiohttp logs non-HTTP bytes (a TLS hello on a plain port) at debug, with a traceback.
        if not self._refused(logging.DEBUG, args, exc_info):
            super().debug(msg, *args, exc_info=exc_info, **kwargs)  # type: ignore[arg-type]

    def _refused(self, level: int, args: tuple[object, ...], error: object) -> bool:
        if not isinstance(error, HttpProcessingError):
            return False
        peer = args[0] if args else "?"
        # One line, escaped by the handler's NetworkTextFilter (gateway/logsafe.py).
        self.logger.log(level, "HTTP request from %s refused: %d %s", peer, error.code,
                        error.message)
        return True
