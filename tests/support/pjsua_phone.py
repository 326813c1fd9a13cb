"""A real SIP phone (pjsua2) for tests: one phone per subprocess, driven from asyncio.

    phone = await PjsuaPhone.start("bob", transport="udp")
    await phone.register("127.0.0.1", gateway.udp_port, "bob", password, "example.test")
    await phone.play_tone(1000)
    await phone.record(tmp_path / "bob.wav")
    incoming = await phone.wait_for("incoming_call")
    await phone.answer()
    await phone.wait_for("call_state", state="CONFIRMED")

Events (wait_for(name, timeout, **fields_to_match)):
    reg_state      code, reason, expiration, active
    incoming_call  call, from, to, call_id, request (the whole INVITE), has_sdp
    call_state     call, state (CALLING|INCOMING|EARLY|CONNECTING|CONFIRMED|DISCONNECTED),
                   code, reason, role (caller|callee)
    media_active   call, codec (e.g. "PCMU"), clock_rate, remote_rtp
    dtmf           call, digit
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from tests.support.pjsua_control import ARTIFACTS_DIR, AgentProcess
from tests.support.ports import free_udp_ports

REPO_ROOT = Path(__file__).resolve().parent.parent.parent




class PjsuaPhone:
    def __init__(self, agent: AgentProcess, name: str, transport: str) -> None:
        self._agent = agent
        self.name = name
        self.transport = transport
        self.sip_port: int = agent.ready["sip_port"]
        self.contact: str = agent.ready["contact"]
        self.log_path = agent.log_path
        self.pjsip_log_path = ARTIFACTS_DIR / f"pjsua-{name}.pjsip.log"

    @classmethod
    async def start(cls, name: str, *, rtp_port: int | None = None, sip_port: int = 0,
                    transport: str = "udp", auto_answer: int | None = None) -> PjsuaPhone:
        """A phone listening on 127.0.0.1:sip_port (0: any free port; see .sip_port).

        Without register() it acts as a PBX/trunk: it takes calls for any user at its address
        (answering them itself when auto_answer is a status code such as 200).
        """
        argv = [
            sys.executable, "-m", "tests.support.pjsua_agent", "--name", name,
            "--rtp-port", str(rtp_port or free_udp_ports(2)), "--sip-port", str(sip_port),
            "--transport", transport,
            "--pjsip-log", str(ARTIFACTS_DIR / f"pjsua-{name}.pjsip.log"),
        ]
        if auto_answer is not None:
            argv += ["--auto-answer", str(auto_answer)]
        agent = await AgentProcess.spawn(name, argv, log_name=f"pjsua-{name}.log",
                                         env={"PYTHONPATH": str(REPO_ROOT)})
        return cls(agent, name, transport)

    def uri(self, user: str | None = None) -> str:
        """This phone's own address, for calling it directly."""
        return f"sip:{user or self.name}@127.0.0.1:{self.sip_port};transport={self.transport}"

    async def register(self, registrar_host: str, port: int, user: str, password: str,
                       domain: str, transport: str | None = None, expires: int = 300,
                       timeout: float = 10.0, contact_params: str = "",
                       instance_id: str = "") -> dict[str, Any]:
        """Register (the registrar is also the outbound proxy for calls) and return the first
        reg_state event: {"code": 200, "expiration": ..., "active": True, ...}.
        contact_params are appended to the Contact URI (RFC 8599 push parameters);
        instance_id ("urn:uuid:...") is the +sip.instance kept across app restarts."""
        await self._agent.request("register", host=registrar_host, port=port, user=user,
                                  password=password, domain=domain, transport=transport,
                                  expires=expires, contact_params=contact_params,
                                  instance_id=instance_id)
        return await self.wait_for("reg_state", timeout)

    async def unregister(self, timeout: float = 10.0) -> dict[str, Any]:
        await self._agent.request("unregister")
        return await self.wait_for("reg_state", timeout)

    async def call(self, uri: str, *, late_offer: bool = False,
                   headers: dict[str, str] | None = None) -> int:
        """Start a call (INVITE without SDP when late_offer); returns the call number."""
        reply = await self._agent.request("call", uri=uri, late_offer=late_offer,
                                          headers=headers)
        return reply["call"]

    async def answer(self, code: int = 200, call: int | None = None) -> None:
        """Answer the (latest) call: 180 to ring, 200 to pick up."""
        await self._agent.request("answer", code=code, call=call)

    async def reject(self, code: int = 486, call: int | None = None) -> None:
        await self._agent.request("reject", code=code, call=call)

    async def hangup(self, call: int | None = None) -> None:
        await self._agent.request("hangup", call=call)

    async def send_dtmf(self, digits: str, call: int | None = None) -> None:
        """RFC 4733 telephone-events."""
        await self._agent.request("send_dtmf", digits=digits, call=call)

    async def play_tone(self, frequency: float) -> Path:
        """Loop a pure tone into every call, now and later; returns the WAV played."""
        reply = await self._agent.request("play_tone", frequency=frequency)
        return Path(reply["wav"])

    async def stop_tone(self) -> None:
        await self._agent.request("stop_tone")

    async def record(self, path: Path) -> None:
        """Record what the calls deliver (16-bit WAV) until stop_recording()."""
        await self._agent.request("record", path=str(path))

    async def stop_recording(self) -> None:
        await self._agent.request("stop_recording")

    async def set_codecs(self, codecs: list[str]) -> list[str]:
        """Offer/accept only these codecs, in this order (e.g. ["PCMU"]); returns codec ids."""
        reply = await self._agent.request("set_codecs", codecs=codecs)
        return reply["enabled"]

    async def set_auto_answer(self, code: int | None) -> None:
        await self._agent.request("set_auto_answer", code=code)

    async def calls(self) -> list[dict[str, Any]]:
        return (await self._agent.request("calls"))["calls"]

    async def wait_for(self, event: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        return await self._agent.wait_for(event, timeout=timeout, **match)

    def unclaimed_events(self, event: str | None = None) -> list[dict[str, Any]]:
        return self._agent.unclaimed_events(event)

    async def suspend(self) -> None:
        """End the process without a word, as a phone OS suspends an app: its connection to
        the registrar closes, its registration stays."""
        await self._agent.kill()

    async def stop(self) -> None:
        """Hang up everything, unregister and end the process."""
        await self._agent.shutdown("quit", timeout=10.0)


@asynccontextmanager
async def registered_phone(gateway: Any, user: str, tone: float) -> AsyncIterator[PjsuaPhone]:
    """A pjsua2 phone registered over UDP to a tests.fixtures.gateway.GatewayProcess as `user`
    (one of its users), playing a tone of `tone` Hz; stopped on exit."""
    phone = await PjsuaPhone.start(f"{user}-{uuid.uuid4().hex[:6]}")
    try:
        registered = await phone.register("127.0.0.1", gateway.udp_port, user,
                                          gateway.users[user], gateway.domain)
        assert registered["code"] == 200, registered
        await phone.play_tone(tone)
        yield phone
    finally:
        await phone.stop()
