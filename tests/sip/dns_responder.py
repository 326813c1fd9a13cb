"""A tiny authoritative DNS server over UDP on loopback, serving fixed records from a dict."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

# (owner name without final dot, record type) → rdata texts in zone-file syntax.
Zone = dict[tuple[str, str], list[str]]


@dataclass
class DnsResponder(asyncio.DatagramProtocol):
    zone: Zone
    ttl: int = 60
    queries: list[tuple[str, str]] = field(default_factory=list)
    transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return  # not DNS: a real server would drop it too
        self.transport.sendto(self.answer(query).to_wire(), addr)

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        owner = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((owner, rdtype))
        texts = self.zone.get((owner, rdtype))
        if texts:
            response.answer.append(
                dns.rrset.from_text_list(question.name, self.ttl, "IN", rdtype, texts)
            )
        elif not any(name == owner for name, _ in self.zone):
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def start_dns_responder(zone: Zone, *, ttl: int = 60) -> DnsResponder:
    """Serve zone on 127.0.0.1 at a free UDP port (responder.port); close() stops it."""
    loop = asyncio.get_running_loop()
    responder = DnsResponder(zone=zone, ttl=ttl)
    await loop.create_datagram_endpoint(lambda: responder, local_addr=("127.0.0.1", 0))
    return responder
