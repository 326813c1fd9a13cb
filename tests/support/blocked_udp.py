"""A network where UDP does not pass: Chromium in its own network namespace whose nftables
drop every UDP packet, as on corporate networks and guest Wi-Fi that allow only TCP out.

    with blocked_udp_network() as network:
        # the gateway, coturn and the phone listen on network.host_address (root side)
        async with launch_browser(tone, executable=str(network.chromium)) as browser: ...

The namespace is joined to the root namespace by a veth pair on a private /30
(network.host_address on the root side, network.browser_address inside). Only the namespace
gets a firewall: the root namespace's rules and routes stay as they are (the kernel adds the
/30's connected route on the new root-side interface, and removes it with the interface).
Playwright talks to Chromium over a pipe, which `ip netns exec` passes through, so the wrapper
script `network.chromium` is a drop-in executable_path.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.browser import CHROMIUM

IP = "/usr/sbin/ip" if Path("/usr/sbin/ip").exists() else "ip"
NFT = "/usr/sbin/nft" if Path("/usr/sbin/nft").exists() else "nft"
# Private /30s for the veth pair; one is picked at random among those no interface uses, so
# that parallel test runs (several worktrees on one machine) do not collide.
SUBNET_POOL = ipaddress.IPv4Network("10.213.0.0/16")
COMMAND_TIMEOUT = 15.0
# Drops UDP both ways, on every interface of the namespace: Chromium can neither send STUN or
# media over UDP nor receive it. TCP (signalling, TURN/TCP, TURN/TLS, ICE-TCP) passes.
DROP_ALL_UDP = """
table inet ws2sip_block_udp {
  chain output {
    type filter hook output priority 0; policy accept;
    meta l4proto udp counter drop
  }
  chain input {
    type filter hook input priority 0; policy accept;
    meta l4proto udp counter drop
  }
}
"""


class BlockedUdpUnavailable(RuntimeError):
    """This machine cannot create network namespaces (not root, no `ip netns`, no nft)."""


@dataclass(frozen=True)
class BlockedUdpNetwork:
    namespace: str
    host_interface: str
    host_address: str  # root side: where the gateway, coturn and the phone listen
    browser_address: str  # inside the namespace: Chromium's only non-loopback address
    chromium: Path  # wrapper running /usr/bin/chromium inside the namespace

    def run_inside(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A command in the namespace (e.g. to check what passes); output captured."""
        return _run(IP, "netns", "exec", self.namespace, *command, check=check)

    def dropped_udp_packets(self) -> int:
        """How many UDP packets the namespace's rules dropped so far (both directions)."""
        listing = _run(NFT, "list", "table", "inet", "ws2sip_block_udp",
                       namespace=self.namespace).stdout
        return sum(int(word_after(line, "packets")) for line in listing.splitlines()
                   if "counter" in line)


def secure_origin_flag(origin: str) -> str:
    """Chromium flag that lets a page on origin use getUserMedia: it needs a secure context
    (https, or loopback), and pages on the namespace's plain-http address are neither."""
    return f"--unsafely-treat-insecure-origin-as-secure={origin}"


def word_after(line: str, word: str) -> str:
    words = line.split()
    return words[words.index(word) + 1]


def _run(*command: str, namespace: str | None = None, check: bool = True,
         stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    if namespace is not None:
        command = (IP, "netns", "exec", namespace, *command)
    result = subprocess.run(command, input=stdin, capture_output=True, text=True,
                            timeout=COMMAND_TIMEOUT, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` exited with {result.returncode}: "
                           f"{result.stderr.strip() or result.stdout.strip()}")
    return result


def _free_subnet() -> ipaddress.IPv4Network:
    used = _run(IP, "-4", "-o", "addr", "show").stdout
    in_use = {ipaddress.IPv4Interface(word).network for line in used.splitlines()
              for word in line.split()[3:4]}
    candidates = list(SUBNET_POOL.subnets(new_prefix=30))
    for _ in range(64):
        subnet = secrets.choice(candidates)
        if not any(subnet.overlaps(other) for other in in_use):
            return subnet
    raise RuntimeError(f"no free /30 in {SUBNET_POOL} for the blocked-UDP namespace")


def check_available() -> None:
    """Raises BlockedUdpUnavailable when namespaces cannot be made here (tests then skip)."""
    if os.geteuid() != 0:
        raise BlockedUdpUnavailable("network namespaces need root")
    for tool in (IP, NFT):
        if shutil.which(tool) is None:
            raise BlockedUdpUnavailable(f"{tool} not installed (tests/bootstrap.sh)")


@contextlib.contextmanager
def blocked_udp_network(chromium: str = CHROMIUM) -> Iterator[BlockedUdpNetwork]:
    """A fresh namespace with UDP dropped; removed on exit, also after a failure."""
    check_available()
    tag = secrets.token_hex(3)
    namespace = f"ws2sip-noudp-{tag}"
    host_interface, inner_interface = f"w2u{tag}h", f"w2u{tag}n"  # at most 15 characters
    subnet = _free_subnet()
    host_address, browser_address = (str(address) for address in subnet.hosts())
    workdir = Path(tempfile.mkdtemp(prefix=f"{namespace}-"))
    wrapper = workdir / "chromium-without-udp"
    try:
        _run(IP, "netns", "add", namespace)
        _run(IP, "link", "add", host_interface, "type", "veth", "peer", "name", inner_interface,
             "netns", namespace)
        _run(IP, "addr", "add", f"{host_address}/30", "dev", host_interface)
        _run(IP, "link", "set", host_interface, "up")
        _run(IP, "-n", namespace, "addr", "add", f"{browser_address}/30", "dev", inner_interface)
        _run(IP, "-n", namespace, "link", "set", inner_interface, "up")
        _run(IP, "-n", namespace, "link", "set", "lo", "up")
        _run(NFT, "-f", "-", namespace=namespace, stdin=DROP_ALL_UDP)
        wrapper.write_text(f'#!/bin/sh\nexec {IP} netns exec {namespace} {chromium} "$@"\n')
        wrapper.chmod(0o755)
        yield BlockedUdpNetwork(namespace, host_interface, host_address, browser_address,
                                wrapper)
    finally:
        _remove(namespace, host_interface)
        shutil.rmtree(workdir, ignore_errors=True)


def _remove(namespace: str, host_interface: str) -> None:
    """Ends what still runs inside (a browser left by a failed test), then the namespace and
    the veth pair: each step is attempted even when an earlier one failed."""
    pids = _run(IP, "netns", "pids", namespace, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    _run(IP, "link", "del", host_interface, check=False)
    _run(IP, "netns", "del", namespace, check=False)
