"""The web phone's HTTP side: the page at `/` (WebSocket upgrades on `/` still reach SIP), its
assets, and `/config.json` with the settings the page needs (WebSocket URL, SIP domain, ICE
servers with time-limited TURN credentials)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

from .config import Config

log = logging.getLogger("ws2sip.web")

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
ANONYMOUS_TURN_USER = "webphone"


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


def ice_servers(config: Config, user: str, now: float) -> list[dict[str, object]]:
    """RTCIceServer dictionaries, ready for `new RTCPeerConnection({iceServers})`."""
    servers: list[dict[str, object]] = []
    if config.stun_uris:
        servers.append({"urls": list(config.stun_uris)})
    if config.turn_uris:
        credentials = turn_credentials(config.turn_secret, user, config.turn_ttl, now)
        servers.append({
            "urls": list(config.turn_uris),
            "username": credentials.username,
            "credential": credentials.credential,
        })
    return servers


class WebPhoneSite:
    """The routes of one HTTP listener; `secure` says whether it speaks TLS (wss)."""

    def __init__(self, config: Config, *, secure: bool) -> None:
        self._config = config
        self._secure = secure

    def add_routes(self, app: web.Application, ws_handler: Handler) -> None:
        if not BUNDLE_PATH.is_file():
            log.warning("web phone not built (%s missing): run `%s`", BUNDLE_PATH, BUILD_COMMAND)

        async def root(request: web.Request) -> web.StreamResponse:
            # sipml5 and Asterisk users point their clients at "/" rather than "/ws".
            if request.headers.get("Upgrade", "").lower() == "websocket":
                return await ws_handler(request)
            return self._page()

        app.router.add_get("/", root)
        app.router.add_get("/config.json", self._settings)
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
        user = request.query.get("user", ANONYMOUS_TURN_USER)
        if not TURN_USER.fullmatch(user):
            raise web.HTTPBadRequest(
                text=f"user: expected 1-64 of A-Z a-z 0-9 . _ + -, got {user!r}\n"
            )
        settings = {
            "ws_url": self._ws_url(request),
            "domain": self._config.domain,
            "ice_servers": ice_servers(self._config, user, time.time()),
            "turn_ttl": self._config.turn_ttl if self._config.turn_uris else None,
        }
        # Credentials inside: never cached by the browser or anything in between.
        return web.json_response(settings, headers={"Cache-Control": "no-store"})

    def _ws_url(self, request: web.Request) -> str:
        # A TLS-terminating reverse proxy serves the page over https: the browser then only
        # allows wss://, though this listener itself is plain ws.
        forwarded_tls = request.headers.get("X-Forwarded-Proto", "").lower() == "https"
        scheme = "wss" if self._secure or forwarded_tls else "ws"
        return f"{scheme}://{request.host}/ws"


def _no_cache() -> dict[str, str]:
    # The page and its bundle change with every build; revalidate rather than run stale code.
    return {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
