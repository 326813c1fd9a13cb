"""Signed flow tokens: which node and connection a Record-Route or Route entry leads back to.

A browser's Contact (`xyz.invalid`) cannot be reached; requests for it must leave on the
WebSocket it came in on, possibly held by another node. The token names that node and flow and
carries an HMAC so nobody outside the cluster can steer requests onto someone else's flow.
"""

from __future__ import annotations

import base64
import functools
import hmac
from dataclasses import dataclass

PARAM = "ws2sip-flow"
MAC_BYTES = 9
# Every in-dialog request repeats its dialog's tokens, and every Record-Route toward a flow
# encodes the same one: each distinct token is signed or checked once.
CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class FlowRef:
    node_id: str
    flow_id: str


class FlowTokens:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self.encode = functools.lru_cache(maxsize=CACHE_SIZE)(self._encode)
        self.decode = functools.lru_cache(maxsize=CACHE_SIZE)(self._decode)

    def _encode(self, ref: FlowRef) -> str:
        payload = f"{ref.node_id}~{ref.flow_id}".encode()
        mac = hmac.digest(self._secret, payload, "sha256")[:MAC_BYTES]
        return base64.urlsafe_b64encode(payload + b"~" + mac).decode().rstrip("=")

    def _decode(self, token: str) -> FlowRef | None:
        """The reference, or None when the token is malformed or not signed by this cluster."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (ValueError, TypeError):
            return None
        # The MAC is binary and may itself contain "~": cut it off by length, not separator.
        payload, sep, mac = raw[:-MAC_BYTES - 1], raw[-MAC_BYTES - 1:-MAC_BYTES], raw[-MAC_BYTES:]
        if sep != b"~" or len(mac) != MAC_BYTES:
            return None
        expected = hmac.digest(self._secret, payload, "sha256")[:MAC_BYTES]
        if not hmac.compare_digest(mac, expected):
            return None
        node_id, separator, flow_id = payload.decode(errors="replace").partition("~")
        return FlowRef(node_id, flow_id) if separator else None
