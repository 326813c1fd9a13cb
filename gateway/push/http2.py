"""The HTTP/2 client the push providers share the making of: one connection per push service,
kept open between pushes (HTTP/2 multiplexes the concurrent ones on it)."""

from __future__ import annotations

import ssl

import httpx

# A push is worth little after a few seconds: the caller is waiting. Connect and answer limits.
REQUEST_TIMEOUT = 10.0


def http2_client(ca_file: str = "", timeout: float = REQUEST_TIMEOUT) -> httpx.AsyncClient:
    """An HTTP/2 client trusting the system's roots, or only `ca_file`'s when given (a private
    push gateway, an egress proxy that terminates TLS, the tests' stand-in services)."""
    verify: ssl.SSLContext | bool = True
    if ca_file:
        verify = ssl.create_default_context(cafile=ca_file)
    return httpx.AsyncClient(http2=True, verify=verify, timeout=timeout)
