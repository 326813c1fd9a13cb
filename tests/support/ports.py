"""Free loopback ports for the peers the tests start."""

from __future__ import annotations

import socket


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def free_udp_ports(count: int = 2) -> int:
    """An even loopback UDP port with the next count-1 ports free too: RTP + RTCP need two,
    SIPp binds four (audio and video RTP/RTCP on -mp .. -mp+3) and dies if one is taken."""
    for _ in range(50):
        base = free_port(socket.SOCK_DGRAM) & ~1
        held: list[socket.socket] = []
        try:
            for offset in range(count):
                probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                held.append(probe)
                probe.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for probe in held:
                probe.close()
    raise RuntimeError(f"no {count} consecutive free UDP ports on 127.0.0.1 after 50 tries")
