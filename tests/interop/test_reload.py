"""SIGHUP reloads a running gateway (gateway/lifecycle.py: ConfigReload): users file, TLS
certificate, limits; a bad file is refused with one line and the running configuration stays."""

from __future__ import annotations

import asyncio
import datetime
import secrets
import signal
import socket
import ssl
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.fixtures.gateway import GatewayFactory, GatewayProcess, run_gateway_command
from tests.support.ports import free_port
from tests.support.ws_sip import WsSipUa, browser_sdp

DOMAIN = "example.com"
REFUSED = "reload refused, the running configuration stays"


def write_certificate(cert_file: Path, key_file: Path, common_name: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def served_common_name(port: int) -> str:
    """The CN of the certificate a new TLS handshake with 127.0.0.1:port sees."""
    pem = ssl.get_server_certificate(("127.0.0.1", port), timeout=5)
    certificate = x509.load_pem_x509_certificate(pem.encode())
    return str(certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def settings(cert: Path, key: Path, max_connections_per_ip: int, trunk_port: int = 0) -> str:
    text = (f'tls_cert = "{cert}"\ntls_key = "{key}"\n'
            f"max_connections_per_ip = {max_connections_per_ip}\n")
    if trunk_port:
        text += (f'[[trunks]]\nname = "pbx"\naddress = "127.0.0.1:{trunk_port}"\n'
                 "match = '^9\\d+$'\nstrip_prefix = \"9\"\n")
    return text


class TrunkSocket(asyncio.DatagramProtocol):
    """A PBX that only listens: the requests the gateway sends it."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.put_nowait(data)


async def reload(gateway: GatewayProcess, line: str, count: int, timeout: float = 10.0) -> None:
    """SIGHUP, then wait until `line` is in the log `count` times."""
    assert gateway.process is not None
    gateway.process.send_signal(signal.SIGHUP)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while gateway.log_text().count(line) < count:
        assert loop.time() < deadline, f"no {line!r} in {gateway.log_path}"
        await asyncio.sleep(0.05)


async def test_sighup_reloads_users_certificate_and_limits_and_refuses_bad_files(
    gateway_factory: GatewayFactory, tmp_path: Path,
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_certificate(cert, key, "first certificate")
    config = tmp_path / "ws2sip.toml"
    config.write_text(settings(cert, key, 100))
    tls_port = free_port(socket.SOCK_STREAM)
    users = {"alice": secrets.token_urlsafe(9), "bob": secrets.token_urlsafe(9)}
    gateway = await gateway_factory(
        users=users, domain=DOMAIN, transports=("udp", "ws"),
        extra_args=["--config", str(config), "--tls", f"127.0.0.1:{tls_port}"],
    )
    assert gateway.users_file is not None
    users_file = gateway.users_file
    assert served_common_name(tls_port) == "first certificate"
    # A connection open before the reload: it must keep working whatever the reloads do.
    alice = await WsSipUa.connect(gateway.ws_url, "alice", users["alice"], domain=DOMAIN)
    try:
        assert (await alice.register()).status == 200

        # A good reload: users file (dave added, bob removed), a new certificate in place of
        # the old one, a lower connection limit, and a trunk.
        trunk = TrunkSocket()
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: trunk, local_addr=("127.0.0.1", 0))
        trunk_port = transport.get_extra_info("sockname")[1]
        dave = secrets.token_urlsafe(9)
        for command in (["add", "dave", "--password", dave], ["del", "bob"]):
            await run_gateway_command(["user", *command, "--domain", DOMAIN,
                                       "--users-file", str(users_file)], gateway.log_path)
        write_certificate(cert, key, "second certificate")
        config.write_text(settings(cert, key, 2, trunk_port))
        await reload(gateway, "reloaded: ", 1)
        reloaded = gateway.log_text().split("reloaded: ")[1].splitlines()[0]
        assert "max_connections_per_ip" in reloaded and "trunks" in reloaded
        # Dialling 9123 now goes to the new trunk, prefix stripped.
        calling = asyncio.create_task(alice.call("9123", browser_sdp("actpass")))
        try:
            invite = await asyncio.wait_for(trunk.received.get(), 10)
            assert invite.startswith(b"INVITE sip:123@127.0.0.1")
        finally:
            calling.cancel()
            transport.close()
        assert served_common_name(tls_port) == "second certificate"
        assert (await alice.register("dave", dave)).status == 200
        assert (await alice.register("bob", users["bob"])).status != 200
        # alice's connection and this one make two: the third is over the new limit.
        second = await WsSipUa.connect(gateway.ws_url, domain=DOMAIN)
        try:
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await WsSipUa.connect(gateway.ws_url, domain=DOMAIN)
        finally:
            await second.close()

        # Bad files: each refused with exactly one line; what runs stays.
        errors_before = gateway.log_text().count(" ERROR ")
        config.write_text("max_connections_per_ip = \"many\"\n")
        await reload(gateway, REFUSED, 1)
        config.write_text(settings(cert, key, 2, trunk_port))
        users_text = users_file.read_text()
        users_file.write_text("{ not json")
        await reload(gateway, REFUSED, 2)
        # Requests after the users file's periodic check interval (1 s) read no new line.
        await asyncio.sleep(1.1)
        assert (await alice.register()).status == 200
        users_file.write_text(users_text)
        write_certificate(tmp_path / "other.pem", tmp_path / "other-key.pem", "mismatched key")
        config.write_text(settings(tmp_path / "other.pem", key, 2, trunk_port))
        await reload(gateway, REFUSED, 3)
        log = gateway.log_text()
        refused = [line for line in log.splitlines() if REFUSED in line]
        assert len(refused) == 3, refused
        assert "max_connections_per_ip" in refused[0]
        assert "malformed user file" in refused[1]
        assert "cannot load tls_cert" in refused[2]
        assert log.count(" ERROR ") - errors_before == 3
        assert "Traceback" not in log
        # The running configuration: the users read before (dave still registers, on the
        # connection open all along), and the certificate loaded before.
        assert (await alice.register("dave", dave)).status == 200
        assert (await alice.register()).status == 200
        assert served_common_name(tls_port) == "second certificate"
    finally:
        await alice.close()
