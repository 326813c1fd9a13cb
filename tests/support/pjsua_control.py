"""JSON-lines control of a child agent process, shared by the pjsua phone and the JsSIP agent.

The child reads one JSON command per line on stdin ({"id": n, "cmd": ..., params...}) and writes
JSON lines on stdout: replies ({"id": n, "ok": true|false, ...}) and unsolicited events
({"event": name, ...}). Its stderr goes to a log file under tests/artifacts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
from pathlib import Path
from typing import Any

ARTIFACTS_DIR = Path(__file__).resolve().parent.parent / "artifacts"
LOG_TAIL_CHARS = 4000


class AgentError(RuntimeError):
    """A command the agent refused or could not carry out, or an agent that died."""


def log_tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return "<no log file>"


class AgentProcess:
    """One running agent: send commands, await replies, await (and keep) events."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._process = process
        self._request_ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._unclaimed_events: list[dict[str, Any]] = []
        self._events_changed = asyncio.Condition()
        self._stdout_closed = False
        self.ready: dict[str, Any] = {}
        self._reader = asyncio.create_task(self._read_stdout(), name=f"{name}-stdout")

    @classmethod
    async def spawn(
        cls, name: str, argv: list[str], log_name: str, ready_timeout: float = 20.0,
        env: dict[str, str] | None = None,
    ) -> AgentProcess:
        """Start argv and wait for its {"event": "ready"} line (kept as .ready); fail with the
        log tail otherwise."""
        ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
        log_path = ARTIFACTS_DIR / log_name
        with log_path.open("wb") as log_file:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                env={**os.environ, **(env or {})},
                limit=1 << 20,
            )
        agent = cls(name, process, log_path)
        try:
            agent.ready = await agent.wait_for("ready", timeout=ready_timeout)
        except BaseException:
            await agent.close()
            raise
        return agent

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    async def request(self, cmd: str, timeout: float = 10.0, **params: Any) -> dict[str, Any]:
        """Send one command and return its reply; AgentError if the agent says it failed."""
        if self._process.returncode is not None or self._process.stdin is None:
            raise AgentError(f"{self.name}: agent exited ({self._process.returncode}) before "
                             f"{cmd!r}; log tail:\n{log_tail(self.log_path)}")
        request_id = next(self._request_ids)
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[request_id] = reply
        line = json.dumps({"id": request_id, "cmd": cmd, **params}) + "\n"
        self._process.stdin.write(line.encode())
        await self._process.stdin.drain()
        try:
            answer = await asyncio.wait_for(reply, timeout)
        except TimeoutError:
            raise AgentError(f"{self.name}: no reply to {cmd!r} within {timeout}s; log tail:\n"
                             f"{log_tail(self.log_path)}") from None
        finally:
            self._replies.pop(request_id, None)
        if not answer.get("ok"):
            raise AgentError(f"{self.name}: {cmd!r} failed: {answer.get('error')}")
        return answer

    async def wait_for(self, event: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        """Return (and consume) the oldest event named `event` whose fields equal `match`.

        Events that arrived before the call are kept, so a test never misses a fast event.
        """

        def claim() -> dict[str, Any] | None:
            for index, candidate in enumerate(self._unclaimed_events):
                if candidate.get("event") == event and all(
                    candidate.get(key) == value for key, value in match.items()
                ):
                    return self._unclaimed_events.pop(index)
            return None

        async def wait() -> dict[str, Any]:
            async with self._events_changed:
                while (found := claim()) is None:
                    if self._stdout_closed:
                        raise AgentError(
                            f"{self.name}: agent exited ({self._process.returncode}) while "
                            f"waiting for {event} {match}; log tail:\n{log_tail(self.log_path)}"
                        )
                    await self._events_changed.wait()
                return found

        try:
            return await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            seen = [e.get("event") for e in self._unclaimed_events]
            raise AgentError(f"{self.name}: no {event} {match} within {timeout}s "
                             f"(unclaimed events: {seen})") from None

    def unclaimed_events(self, event: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self._unclaimed_events if event is None or e.get("event") == event]

    async def shutdown(self, command: str, timeout: float) -> None:
        """Send the agent its own quit command, then close() whatever it answered: a failed
        quit is in the agent's log, and the process must end either way."""
        if self.returncode is None:
            with contextlib.suppress(AgentError):
                await self.request(command, timeout=timeout)
            await self.close(timeout=timeout)

    async def kill(self) -> None:
        """SIGKILL at once: the process says nothing more (no BYE, no un-REGISTER), and the
        kernel closes its connections, as when a phone OS suspends or ends an app."""
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()
        await self._process.wait()
        with contextlib.suppress(asyncio.CancelledError, AgentError):
            await self._reader

    async def close(self, timeout: float = 5.0) -> None:
        """Ask politely (stdin EOF), then SIGTERM, then SIGKILL."""
        process = self._process
        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()
        for escalation in (None, signal.SIGTERM, signal.SIGKILL):
            if process.returncode is not None:
                break
            if escalation is not None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(escalation)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), timeout)
        with contextlib.suppress(asyncio.CancelledError, AgentError):
            await self._reader

    async def _read_stdout(self) -> None:
        assert self._process.stdout is not None
        try:
            async for raw_line in self._process.stdout:
                try:
                    message = json.loads(raw_line)
                except json.JSONDecodeError:
                    # Native code in the agent may print despite its logging set-up: keep the
                    # line visible to the test instead of losing the agent over it.
                    message = {"event": "stray_output", "line": raw_line.decode(errors="replace")}
                if "event" in message:
                    async with self._events_changed:
                        self._unclaimed_events.append(message)
                        self._events_changed.notify_all()
                elif (reply := self._replies.get(message.get("id", -1))) and not reply.done():
                    reply.set_result(message)
        finally:
            died = AgentError(f"{self.name}: agent stdout closed; log tail:\n"
                              f"{log_tail(self.log_path)}")
            for reply in self._replies.values():
                if not reply.done():
                    reply.set_exception(died)
            async with self._events_changed:
                self._stdout_closed = True
                self._events_changed.notify_all()
