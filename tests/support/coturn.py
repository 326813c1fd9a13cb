"""A real coturn (Debian's `turnserver`) configured by deploy/coturn/turnserver.conf, as an
operator would run it, on free ports of the test machine.

    with running_coturn(tmp_dir, secret=TURN_SECRET) as turn:
        gateway args: turn.gateway_args("tcp")   # --turn-uri turn:127.0.0.1:P?transport=tcp ...
        Chromium trusts its TLS certificate with turn.chromium_args()

The deployment file is the base; the command line only adds what a test machine must differ in:
ports, listening and relay addresses, the test certificate, the shared secret, and loopback
peers (the file refuses every private and loopback peer, and the tests' gateway media is on
127.0.0.1, so exactly that address is allowed). Its TLS listener uses a certificate made here
with `cryptography` for the listening addresses; Chromium is told to trust that certificate's
key (--ignore-certificate-errors-spki-list), and nothing else.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import ipaddress
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.fixtures.gateway import ARTIFACTS_DIR, REPO_ROOT

TURNSERVER = "/usr/bin/turnserver"
CONFIG_FILE = REPO_ROOT / "deploy" / "coturn" / "turnserver.conf"
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
RELAY_PORT_SPAN = 200
LOG_TAIL_CHARS = 4000
TRANSPORTS = ("udp", "tcp", "tls")
# For a browser context's add_init_script: `iceTransportPolicy: "relay"` on every
# RTCPeerConnection (never host candidates, only the TURN relay), as a privacy setting or an
# operator's page would set it. It runs before the web phone's scripts; JsSIP builds its
# RTCPeerConnection from the global constructor.
RELAY_ONLY_POLICY = """
(() => {
  const Native = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends Native {
    constructor(config = {}, ...rest) {
      super({ ...config, iceTransportPolicy: "relay" }, ...rest);
    }
  };
})();
"""


@dataclass(frozen=True)
class TestCertificate:
    cert_path: Path
    key_path: Path
    spki_sha256: str  # base64 SHA-256 of the SubjectPublicKeyInfo, as Chromium's flag wants


def make_certificate(directory: Path, addresses: Sequence[str]) -> TestCertificate:
    """A self-signed certificate naming the listening IP addresses (browsers check the SAN
    against the address in the turns: URI)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ws2sip test TURN server")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(address)) for address in addresses]),
            critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "turn-cert.pem", directory / "turn-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return TestCertificate(cert_path, key_path,
                           base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii"))


@dataclass(frozen=True)
class Coturn:
    host: str  # the address the URIs name (the first listening address)
    port: int  # STUN/TURN over UDP and TCP
    tls_port: int
    secret: str
    certificate: TestCertificate
    log_path: Path
    process: subprocess.Popen[bytes]

    def uri(self, transport: str, host: str | None = None) -> str:
        """The RTCIceServer URL that reaches this server over transport (udp|tcp|tls), at
        host (one of its listening addresses; default: the first)."""
        host = host or self.host
        if transport == "tls":
            return f"turns:{host}:{self.tls_port}?transport=tcp"
        if transport in ("udp", "tcp"):
            return f"turn:{host}:{self.port}?transport={transport}"
        raise ValueError(f"unknown TURN transport {transport!r}; use one of {TRANSPORTS}")

    def gateway_args(self, *transports: str, host: str | None = None) -> list[str]:
        """Gateway flags that hand out this server (only these transports) in /config.json."""
        args = ["--turn-secret", self.secret]
        for transport in transports:
            args += ["--turn-uri", self.uri(transport, host)]
        return args

    def chromium_args(self) -> tuple[str, ...]:
        """Chromium flags to trust this server's test certificate (by its key)."""
        return (f"--ignore-certificate-errors-spki-list={self.certificate.spki_sha256}",)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]


def _port_free_for_tcp_and_udp(host: str) -> int:
    """A port free for both TCP and UDP on host (coturn listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError(f"no port free for both TCP and UDP on {host}")


def _wait_listening(process: subprocess.Popen[bytes], addresses: list[tuple[str, int]],
                    log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    pending = list(addresses)
    while pending:
        if process.poll() is not None:
            raise RuntimeError(f"turnserver exited with {process.returncode}; log {log_path}:\n"
                               f"{log_path.read_text(errors='replace')[-LOG_TAIL_CHARS:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"turnserver not listening on {pending} after {READY_TIMEOUT}s;"
                               f" log {log_path}")
        with contextlib.suppress(OSError), socket.create_connection(pending[0], timeout=0.5):
            pending.pop(0)
            continue
        time.sleep(0.1)


@contextlib.contextmanager
def running_coturn(workdir: Path, *, secret: str, listen: Sequence[str] = ("127.0.0.1",),
                   relay_address: str = "127.0.0.1",
                   allowed_peer: str = "127.0.0.1") -> Iterator[Coturn]:
    """turnserver -c deploy/coturn/turnserver.conf on listen's addresses; stopped on exit.

    Relay allocations are made on relay_address; allowed_peer is the one address the relays
    may send to (the gateway's media address), on top of the file's deny list.
    """
    if not Path(TURNSERVER).exists():
        raise RuntimeError(f"{TURNSERVER} not found: install the Debian package coturn "
                           "(tests/bootstrap.sh)")
    workdir.mkdir(parents=True, exist_ok=True)
    host = listen[0]
    port, tls_port = _port_free_for_tcp_and_udp(host), _port_free_for_tcp_and_udp(host)
    relay_low = 50_000 + (port % 50) * RELAY_PORT_SPAN
    certificate = make_certificate(workdir, listen)
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    log_path = ARTIFACTS_DIR / f"coturn-{port}.log"
    argv = [
        TURNSERVER, "-c", str(CONFIG_FILE),
        "--listening-port", str(port), "--tls-listening-port", str(tls_port),
        *[arg for address in listen for arg in ("--listening-ip", address)],
        "--relay-ip", relay_address,
        "--min-port", str(relay_low), "--max-port", str(relay_low + RELAY_PORT_SPAN - 1),
        "--static-auth-secret", secret,
        "--cert", str(certificate.cert_path), "--pkey", str(certificate.key_path),
        # The file denies loopback and private peers; the tests' gateway media is on loopback.
        "--allow-loopback-peers", "--allowed-peer-ip", allowed_peer,
        # Alternate ports for RFC 5780 NAT discovery would be port+1: not needed, not probed.
        "--no-rfc5780",
        "--pidfile", str(workdir / "turnserver.pid"), "--userdb", str(workdir / "turndb"),
    ]
    with log_path.open("wb") as log:
        log.write(f"$ {' '.join(argv)}\n".encode())
        log.flush()
        # The file logs to stdout (log-file=stdout): it lands in log_path.
        process = subprocess.Popen(argv, cwd=workdir, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_listening(process, [(host, port), (host, tls_port)], log_path)
        yield Coturn(host, port, tls_port, secret, certificate, log_path, process)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
