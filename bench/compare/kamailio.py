"""Kamailio 5.6 (Debian package) on a free loopback port with kamailio-ws.cfg."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from processes import process_tree

# run.py puts bench/ on sys.path: the same helpers the ws2sip register bench uses.
from register_bench import free_port, raise_open_file_limit, wait_until_listening

CONFIG = Path(__file__).resolve().parent / "kamailio-ws.cfg"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class Kamailio:
    pid: int
    port: int
    log_path: Path

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def pids(self) -> list[int]:
        return process_tree(self.pid)


@contextmanager
def kamailio(workdir: Path, password: str, shared_memory_mb: int) -> Iterator[Kamailio]:
    """Kamailio in the foreground (-DD: the creator stays our child, its workers fork off it),
    logging to workdir; stopped with SIGTERM on exit."""
    executable = shutil.which("kamailio") or "/usr/sbin/kamailio"
    port = free_port()
    runtime_dir = workdir / f"kamailio-{port}"
    runtime_dir.mkdir()
    log_path = workdir / f"kamailio-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [executable, "-DD", "-E", "-f", str(CONFIG), "-l", f"tcp:127.0.0.1:{port}",
             "-m", str(shared_memory_mb), "-M", "16", "-Y", str(runtime_dir),
             "-P", str(runtime_dir / "kamailio.pid"), "-A", f'BENCH_PASSWORD="{password}"'],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=raise_open_file_limit,
        )
    try:
        if not wait_until_listening(port, READY_TIMEOUT, lambda: process.poll() is None):
            raise RuntimeError(f"kamailio did not listen on {port} (exit {process.poll()}); "
                               f"log {log_path}:\n{log_path.read_text()[-3000:]}")
        yield Kamailio(process.pid, port, log_path)
    finally:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
