"""An ASGI app served over HTTP/2 and TLS on loopback (hypercorn), for the push stand-ins.

    async with serve_http2(app, tmp_path) as server:
        server.url       # "https://127.0.0.1:PORT"
        server.ca_file   # the self-signed certificate to trust (the gateway's push ca_file)

The certificate is made for 127.0.0.1 and localhost at start; the listening socket is bound
before hypercorn starts (port 0), so no other run can take the port in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypercorn.asyncio import serve
from hypercorn.config import Config

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


@dataclass(frozen=True)
class Http2Server:
    url: str
    ca_file: Path
    port: int


def write_self_signed(directory: Path, name: str = "push-standin") -> tuple[Path, Path]:
    """A certificate (its own CA) for 127.0.0.1 and localhost, and its key: (cert, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / f"{name}.crt"
    key_path = directory / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    return cert_path, key_path


@contextlib.asynccontextmanager
async def serve_http2(app: Any, directory: Path, name: str = "push-standin", *,
                      idle_timeout: float = 5.0, max_requests: int = 1000,
                      ) -> AsyncIterator[Http2Server]:
    """Serve `app` (ASGI 3) on https://127.0.0.1:<free port> with HTTP/2 (ALPN h2) until exit.

    idle_timeout and max_requests: when the server closes a connection (idle, or after that
    many requests with a GOAWAY), hypercorn's defaults; a bench keeps its connection longer."""
    cert_path, key_path = write_self_signed(directory, name)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    config = Config()
    # hypercorn takes ownership of (and closes) the descriptor it is given: a duplicate.
    config.bind = [f"fd://{os.dup(listener.fileno())}"]
    config.certfile = str(cert_path)
    config.keyfile = str(key_path)
    config.alpn_protocols = ["h2"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0  # clients (the gateway) may keep their connection open
    config.keep_alive_timeout = idle_timeout
    config.keep_alive_max_requests = max_requests
    stopping = asyncio.Event()
    serving = asyncio.create_task(serve(app, config, shutdown_trigger=stopping.wait))
    try:
        await _wait_listening(port, serving)
        yield Http2Server(f"https://127.0.0.1:{port}", cert_path, port)
    finally:
        stopping.set()
        done, _ = await asyncio.wait({serving}, timeout=STOP_TIMEOUT)
        if not done:
            serving.cancel()
        # hypercorn ends by cancelling the connections still open, and its own clean-up of them
        # may then trip (InvalidStateError): neither is an error of the test.
        with contextlib.suppress(asyncio.CancelledError, asyncio.InvalidStateError):
            await serving
        listener.close()


async def _wait_listening(port: int, serving: asyncio.Task[None]) -> None:
    """Until a TCP connect to the port succeeds (hypercorn has started accepting)."""
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT
    while True:
        if serving.done():
            serving.result()  # raises what stopped it
            raise RuntimeError("hypercorn stopped before listening")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"hypercorn not listening on {port} after "
                                   f"{START_TIMEOUT}s") from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def http_request_body(scope: dict[str, Any], receive: Receive, send: Send) -> bytes | None:
    """For a stand-in's ASGI entry point: answers the server's lifespan events and returns None
    for anything but an HTTP request; for one, its whole body."""
    if scope["type"] == "lifespan":
        while True:
            event = (await receive())["type"]
            await send({"type": f"{event}.complete"})  # lifespan.startup / .shutdown
            if event == "lifespan.shutdown":
                return None
    if scope["type"] != "http":
        return None
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body
