"""Signed flow tokens: which node and connection a Route or Record-Route entry leads to.

A browser's Contact (`xyz.invalid`) cannot be reached; requests for it must leave on the
WebSocket it came in on, possibly held by another node. A token names that node and flow and
carries an HMAC so nobody outside the cluster can steer requests onto someone else's flow.

Every token is bound to one Call-ID and to its use, both covered by the MAC:
- a HOP token is what one node puts in the Route of a request it hands to the node holding the
  callee's flow. It never leaves the cluster (the receiving node removes its own Route entries),
  expires after HOP_LIFETIME, and is the only token that opens anything outside a dialog.
- a DIALOG token sits in our Record-Route, which both parties of the call (and anyone they show
  it to) see. It is only checked against the dialog it was issued for, and opens nothing else:
  replayed in a new request it is refused (RFC 5626 §5.2 tokens, hardened).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import time
from dataclasses import dataclass

PARAM = "ws2sip-flow"
MAC_BYTES = 9
HOP = "hop"
DIALOG = "dialog"
# A hop token only has to survive the hop and its retransmissions (Timer B/F: 64*T1 = 32 s).
HOP_LIFETIME = 32
# Every in-dialog request repeats its dialog's tokens: each distinct token is checked once.
CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class FlowRef:
    node_id: str
    flow_id: str


class FlowTokens:
    def __init__(self, secret: bytes) -> None:
        # Keyed BLAKE2b (a MAC, RFC 7693 §2.9; a quarter of HMAC-SHA256's cost) under a key
        # of its own, derived from the cluster secret: a token is signed for every INVITE.
        self._key = hmac.digest(secret, b"ws2sip flow token", "sha256")
        self._check = functools.lru_cache(maxsize=CACHE_SIZE)(self._verify)

    def encode(self, ref: FlowRef, call_id: str, use: str = DIALOG) -> str:
        """A token for `ref`, valid for requests of `call_id` in `use` (DIALOG or HOP)."""
        expiry = int(time.time()) + HOP_LIFETIME if use == HOP else 0
        payload = f"{ref.node_id}~{ref.flow_id}~{expiry}".encode()
        mac = self._mac(payload, call_id, use)
        return base64.urlsafe_b64encode(payload + b"~" + mac).decode().rstrip("=")

    def decode(self, token: str, call_id: str, use: str = DIALOG) -> FlowRef | None:
        """The reference, or None when the token is malformed, not signed by this cluster,
        issued for another Call-ID or use, or (a hop token) expired."""
        checked = self._check(token, call_id, use)
        if checked is None:
            return None
        ref, expiry = checked
        if use == HOP and expiry < time.time():
            return None
        return ref

    def _verify(self, token: str, call_id: str, use: str) -> tuple[FlowRef, int] | None:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (ValueError, TypeError):
            return None
        # The MAC is binary and may itself contain "~": cut it off by length, not separator.
        payload, sep, mac = raw[:-MAC_BYTES - 1], raw[-MAC_BYTES - 1:-MAC_BYTES], raw[-MAC_BYTES:]
        if sep != b"~" or len(mac) != MAC_BYTES:
            return None
        if not hmac.compare_digest(mac, self._mac(payload, call_id, use)):
            return None
        node_id, _, rest = payload.decode(errors="replace").partition("~")
        flow_id, separator, expiry = rest.rpartition("~")
        if not separator or not expiry.isdigit():
            return None
        return FlowRef(node_id, flow_id), int(expiry)

    def _mac(self, payload: bytes, call_id: str, use: str) -> bytes:
        material = b"\0".join((use.encode(), call_id.encode(errors="surrogatepass"), payload))
        return hashlib.blake2b(material, key=self._key, digest_size=MAC_BYTES).digest()
