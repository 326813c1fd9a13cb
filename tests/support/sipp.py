"""SIPp as a subprocess: scenarios from tests/sipp/, bounded by call count and time.

    uas = await Sipp.start("uas_answer.xml", name="callee")
    result = await run_sipp("uac_call.xml", remote=f"127.0.0.1:{gateway.udp_port}",
                            service="bob", auth=("alice", pw), keys={"domain": "example.test"})
    result.assert_success()
    (await uas.wait()).assert_success()

Scenarios (keys in parentheses, passed with keys={...}):
    register_uac.xml    REGISTER [service]@domain, answer 401 with auth, expect 200 (domain,
                        expires)
    registrar_uas.xml   challenge a REGISTER, verify digest of user/password: 200 or 403 + error
                        (domain, user, password)
    uac_call.xml        INVITE [service]@domain with G.711 SDP, answer 401/407 with auth, ACK,
                        hold call_duration_ms, BYE (domain, caller = From user, default: the
                        auth user or "sipp")
    uac_cancel.xml      INVITE, CANCEL after 180, expect 200 + 487, ACK (domain, caller)
    uas_answer.xml      180, 200 with SDP, ACK, then BYE -> 200
    uas_busy.xml        486, ACK
    uas_no_answer.xml   180 then wait for CANCEL -> 200 + 487, ACK
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import itertools
import os
import re
import shutil
import signal
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tests.support import ports
from tests.support.pjsua_control import ARTIFACTS_DIR, log_tail
from tests.support.ports import free_udp_ports

if TYPE_CHECKING:
    from tests.fixtures.gateway import GatewayProcess

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "sipp"
TRANSPORT_FLAGS = {"udp": "u1", "tcp": "t1"}
# sipp's own exit codes (sipp(1)): 0 all calls succeeded, 1 some failed, 97 exited on internal
# command, 99 exited without processing a call, 255 fatal error.
EXIT_MEANINGS = {0: "all calls succeeded", 1: "at least one call failed",
                 97: "exit on internal command", 99: "no call processed", 255: "fatal error"}
KILL_GRACE = 5.0

_run_numbers = itertools.count(1)


def free_port(transport: str) -> int:
    """A free loopback port for a SIPp transport ("udp" or "tcp")."""
    return ports.free_port(socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM)


@dataclass
class SippResult:
    scenario: str
    exit_code: int
    successful_calls: int
    failed_calls: int
    stats: dict[str, str]
    errors: str
    log_path: Path
    message_log_path: Path

    def describe(self) -> str:
        meaning = EXIT_MEANINGS.get(self.exit_code, "unknown exit code")
        return (f"sipp {self.scenario}: exit {self.exit_code} ({meaning}), "
                f"{self.successful_calls} succeeded, {self.failed_calls} failed\n"
                f"errors:\n{self.errors[-3000:] or '<none>'}\n"
                f"output ({self.log_path}):\n{log_tail(self.log_path, 2000)}\n"
                f"messages: {self.message_log_path}")

    def assert_success(self) -> None:
        assert self.exit_code == 0 and self.failed_calls == 0, self.describe()


@dataclass
class Sipp:
    scenario: str
    port: int
    timeout: float
    process: asyncio.subprocess.Process
    files: dict[str, Path] = field(default_factory=dict)

    @classmethod
    async def start(
        cls, scenario: str, *, remote: str | None = None, port: int | None = None,
        transport: str = "udp", calls: int = 1, rate: float | None = None,
        timeout: float = 30.0, service: str | None = None,
        auth: tuple[str, str] | None = None, keys: Mapping[str, str] | None = None,
        call_duration_ms: int | None = None, media_port: int | None = None,
        extra_args: Sequence[str] = (), name: str | None = None,
    ) -> Sipp:
        """Start sipp with scenario (a file in tests/sipp/) on 127.0.0.1:port (free if None);
        a UAC when remote ("host:port") is given. It ends after `calls` calls or `timeout` s."""
        path = SCENARIO_DIR / scenario
        if not path.is_file():
            raise FileNotFoundError(f"no sipp scenario {path}")
        executable = shutil.which("sipp")
        if executable is None:
            raise RuntimeError("sipp is not installed (Debian package sip-tester); "
                               "run tests/bootstrap.sh")
        port = port or free_port(transport)
        label = f"sipp-{name or path.stem}-{os.getpid()}-{next(_run_numbers)}"
        ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
        files = {kind: ARTIFACTS_DIR / f"{label}.{kind}"
                 for kind in ("log", "stats.csv", "errors.log", "messages.log", "screen.log")}
        for stale in files.values():
            stale.unlink(missing_ok=True)
        argv = [
            executable, *([remote] if remote else []), "-sf", str(path),
            "-i", "127.0.0.1", "-p", str(port), "-t", TRANSPORT_FLAGS[transport],
            "-mi", "127.0.0.1", "-mp", str(media_port or free_udp_ports(4)),
            "-m", str(calls), "-timeout", f"{timeout}s", "-timeout_error", "-nostdin",
            "-trace_stat", "-stf", str(files["stats.csv"]),
            "-trace_err", "-error_file", str(files["errors.log"]),
            "-trace_msg", "-message_file", str(files["messages.log"]),
            "-trace_screen", "-screen_file", str(files["screen.log"]),
        ]
        if rate is not None:
            argv += ["-r", str(rate)]
        if service is not None:
            argv += ["-s", service]
        if auth is not None:
            argv += ["-au", auth[0], "-ap", auth[1]]
        if call_duration_ms is not None:
            argv += ["-d", str(call_duration_ms)]
        # The From user of the UAC scenarios: a proxy checks it against the credentials.
        keys = {"caller": auth[0] if auth else "sipp", **(keys or {})}
        for key, value in keys.items():
            argv += ["-key", key, str(value)]
        argv += list(extra_args)
        with files["log"].open("wb") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                cwd=ARTIFACTS_DIR,
            )
        return cls(scenario, port, timeout, process, files)

    async def wait(self) -> SippResult:
        """Wait for sipp to end (it bounds itself with -timeout; a hung one is killed)."""
        try:
            await asyncio.wait_for(self.process.wait(), self.timeout + KILL_GRACE)
        except TimeoutError:
            await self.stop()
        return self.result()

    async def stop(self) -> SippResult:
        for stop_signal in (signal.SIGTERM, signal.SIGKILL):
            if self.process.returncode is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(stop_signal)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), KILL_GRACE)
        return self.result()

    def result(self) -> SippResult:
        stats = self._last_stats_row()
        return SippResult(
            scenario=self.scenario,
            exit_code=self.process.returncode if self.process.returncode is not None else -1,
            successful_calls=int(stats.get("SuccessfulCall(C)", 0) or 0),
            failed_calls=int(stats.get("FailedCall(C)", 0) or 0),
            stats=stats,
            errors=self._read("errors.log"),
            log_path=self.files["log"],
            message_log_path=self.files["messages.log"],
        )

    def _read(self, kind: str) -> str:
        path = self.files[kind]
        return path.read_text(errors="replace") if path.exists() else ""

    def _last_stats_row(self) -> dict[str, str]:
        rows = list(csv.reader(self._read("stats.csv").splitlines(), delimiter=";"))
        if len(rows) < 2:
            return {}
        return dict(zip(rows[0], rows[-1], strict=False))


async def run_sipp(scenario: str, **options: object) -> SippResult:
    """Start sipp (see Sipp.start for the options) and wait for its result."""
    sipp = await Sipp.start(scenario, **options)  # type: ignore[arg-type]
    return await sipp.wait()


def messages(result: SippResult) -> str:
    """Everything SIPp sent and received (its -trace_msg log). SIPp creates the log with the
    first message it traces: a SIPp that saw no message at all has none."""
    if not result.message_log_path.exists():
        return ""
    return result.message_log_path.read_text(errors="replace")


def received_requests(result: SippResult, method: str) -> list[str]:
    """The requests of `method` SIPp received (its message log marks them 'received')."""
    blocks = re.split(r"\n(?=-{10,} )", messages(result))
    return [block for block in blocks
            if "message received" in block and re.search(rf"^{method} sip:", block, re.M)]


async def register_then_serve(
    gateway: GatewayProcess, user: str, scenario: str, *, timeout: float = 20.0,
    name: str | None = None,
) -> Sipp:
    """A SIPp callee registered with the gateway as `user` (of gateway.domain): SIPp REGISTERs
    from a port, then the UAS scenario listens on that same port (the binding's received
    address)."""
    port = free_port("udp")
    registered = await run_sipp(
        "register_uac.xml", remote=f"127.0.0.1:{gateway.udp_port}", port=port, service=user,
        auth=(user, gateway.users[user]), keys={"domain": gateway.domain, "expires": "300"},
        timeout=10, name=f"register-{name or user}", media_port=free_udp_ports(4),
    )
    registered.assert_success()
    return await Sipp.start(scenario, port=port, timeout=timeout, name=name or f"uas-{user}",
                            media_port=free_udp_ports(4))
