"""Compiles the per-message signalling path and the per-packet media path to C with mypyc;
everything else is in pyproject.toml.

The parser, grammar and digest code, the transaction and transport layers, the proxy, the
registrar and the location model run for every SIP message; the media relay's sockets, SRTP
calls, forwarding and legs (webrtc/datagram, srtp, ice_media, forwarding, plain, webrtc_leg)
for every RTP packet. They are plain typed Python, and mypyc compiles them unchanged to C
extensions. That cuts the gateway's CPU per call by about a third. `WS2SIP_PURE_PYTHON=1` at
install time skips the compilation. The modules then run as Python, with identical behaviour,
only slower.

webrtc/_relaypath.c is the relay's hand-written C fast path for latched, relay-only media (see
its header); it is built next to the mypyc modules and skipped likewise. Without it (or with
WS2SIP_RELAY_PUMP=0 at run time) the compiled or interpreted Python path relays every packet.
"""

import os

from setuptools import Extension, setup

# Not compiled: sip/flow.py (its Flow base class is subclassed by interpreted code, which
# compiled classes forbid), webrtc/ice.py (subclasses aioice's Connection; its per-packet part
# is webrtc/ice_media.py), start-up, configuration, HTTP, Redis, DTLS, SDP and the media
# session logic, where the time is not spent.
COMPILED_MODULES = [
    "sip/errors.py",
    "sip/status.py",
    "sip/record.py",
    "sip/grammar.py",
    "sip/uri.py",
    "sip/headers.py",
    "sip/message.py",
    "sip/digest.py",
    "sip/branch.py",
    "sip/framing.py",
    "sip/timers.py",
    "sip/transaction.py",
    "sip/server_transaction.py",
    "sip/client_transaction.py",
    "sip/transport.py",
    "sip/udp.py",
    "sip/stream.py",
    "gateway/proxy.py",
    "gateway/registrar.py",
    "gateway/auth.py",
    "gateway/routing.py",
    "gateway/dialogs.py",
    "gateway/flowtoken.py",
    "gateway/tasks.py",
    "gateway/dispatch.py",
    "gateway/media.py",
    "gateway/location/model.py",
    "gateway/location/memory.py",
    "webrtc/datagram.py",
    "webrtc/srtp.py",
    "webrtc/ice_media.py",
    "webrtc/forwarding.py",
    "webrtc/plain.py",
    "webrtc/webrtc_leg.py",
]


RELAY_PATH = Extension(
    "webrtc._relaypath", sources=["webrtc/_relaypath.c"], extra_compile_args=["-O2"],
    optional=True,  # a build without a C compiler still installs, with the Python path
)


def compiled_extensions() -> list:
    if os.environ.get("WS2SIP_PURE_PYTHON") == "1":
        return []
    from mypyc.build import mypycify

    # The modules' imports are type-checked only as far as the compiled code needs them.
    return [
        *mypycify(["--follow-imports=silent", "--ignore-missing-imports", *COMPILED_MODULES],
                  opt_level="3"),
        RELAY_PATH,
    ]


setup(ext_modules=compiled_extensions())
