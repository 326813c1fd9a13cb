"""JsSIP (the browser SIP stack) running in node: REGISTER and MESSAGE over a real WebSocket."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tests.support.pjsua_control import AgentProcess

JS_DIR = Path(__file__).resolve().parent.parent / "js"


class JsSipAgent:
    """A JsSIP UA in its own node process. Events: connected, disconnected, registered,
    unregistered, registrationFailed (status, cause), newMessage (from, body, content_type)."""

    def __init__(self, agent: AgentProcess) -> None:
        self._agent = agent
        self.name = agent.name
        self.log_path = agent.log_path

    @classmethod
    async def start(cls, name: str) -> JsSipAgent:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not installed; run tests/bootstrap.sh")
        if not (JS_DIR / "node_modules" / "jssip").is_dir():
            raise RuntimeError(f"{JS_DIR}/node_modules is missing; run tests/bootstrap.sh")
        agent = await AgentProcess.spawn(
            name, [node, str(JS_DIR / "jssip_agent.mjs")], log_name=f"jssip-{name}.log",
            env={"DEBUG_COLORS": "no"},
        )
        return cls(agent)

    async def register(
        self, ws_url: str, uri: str, password: str, *, authorization_user: str | None = None,
        display_name: str | None = None, register_expires: int | None = None,
        instance_id: str | None = None, contact_uri: str | None = None,
        extra_headers: list[str] | None = None, timeout: float = 15.0,
    ) -> dict[str, Any]:
        """Start the UA (it registers on connect) and return the first outcome:
        {"outcome": "registered"|"registrationFailed"|"transportError", "status", "cause", ...}."""
        return await self._agent.request(
            "register", timeout=timeout, ws_url=ws_url, uri=uri, password=password,
            authorization_user=authorization_user, display_name=display_name,
            register_expires=register_expires, instance_id=instance_id, contact_uri=contact_uri,
            extra_headers=extra_headers,
        )

    async def unregister(self, *, all_contacts: bool = False, timeout: float = 10.0
                         ) -> dict[str, Any]:
        return await self._agent.request("unregister", timeout=timeout, all=all_contacts)

    async def send_message(self, target: str, body: str, content_type: str = "text/plain",
                           timeout: float = 15.0) -> dict[str, Any]:
        """{"outcome": "succeeded"|"failed", "status", "reason", "cause"}."""
        return await self._agent.request("message", timeout=timeout, target=target, body=body,
                                         content_type=content_type)

    async def wait_for(self, event: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        return await self._agent.wait_for(event, timeout=timeout, **match)

    def unclaimed_events(self, event: str | None = None) -> list[dict[str, Any]]:
        """Events received but not yet consumed by wait_for."""
        return self._agent.unclaimed_events(event)

    async def stop(self) -> None:
        await self._agent.shutdown("stop", timeout=5.0)
