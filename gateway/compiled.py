"""Which of ws2sip's modules the install compiles to C, and whether this install did.

setup.py reads COMPILED_MODULES from this file by path (it runs before the package's
dependencies are importable); the gateway reads it at start-up to say how it runs, and
`ws2sip selfcheck` imports each module and creates an instance of each of its classes.
"""

from __future__ import annotations

import importlib
from importlib.machinery import EXTENSION_SUFFIXES

# The per-message signalling path and the per-packet media path (see setup.py for why these).
COMPILED_MODULES: tuple[str, ...] = (
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
    "sip/tasks.py",
    "sip/transaction.py",
    "sip/server_transaction.py",
    "sip/client_transaction.py",
    "sip/transport.py",
    "sip/udp.py",
    "sip/stream.py",
    "gateway/proxy.py",
    "gateway/forking.py",
    "gateway/targets.py",
    "gateway/refusal.py",
    "gateway/registrar.py",
    "gateway/auth.py",
    "gateway/routing.py",
    "gateway/dialogs.py",
    "gateway/flowtoken.py",
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
)

# mypy's options for the compilation. --follow-imports=silent: the compiled modules' imports are
# type-checked as far as the compiled code needs them. No --ignore-missing-imports: a library
# that is not installed at build time fails the build, naming it, instead of being typed Any
# (setup.py says why that matters). --config-file= (empty: no file): the build does not read
# pyproject's [tool.mypy], whose strict rules are for review, checked by the test command
# (tests/test_types.py). They change no generated code, only what counts as an error: read by
# the build, a rule such as warn_unused_ignores or warn_return_any, whose verdict can change
# with a library's version within the ranges pyproject allows, would fail an install.
MYPYC_ARGS: tuple[str, ...] = ("--follow-imports=silent", "--config-file=")

# The relay's hand-written C fast path (webrtc/_relaypath.c), an optional extension.
RELAY_PATH_MODULE = "webrtc._relaypath"


def module_name(path: str) -> str:
    """'sip/uri.py' -> 'sip.uri'."""
    return path.removesuffix(".py").replace("/", ".")


def _is_extension(module_name_: str) -> bool:
    module = importlib.import_module(module_name_)
    return (module.__file__ or "").endswith(tuple(EXTENSION_SUFFIXES))


def interpreted_modules() -> list[str]:
    """The modules of COMPILED_MODULES that this install runs as Python."""
    return [name for name in map(module_name, COMPILED_MODULES) if not _is_extension(name)]


def relay_path_built() -> bool:
    try:
        return _is_extension(RELAY_PATH_MODULE)
    except ImportError:
        return False


def describe() -> str:
    """One line for the start-up log: how this install runs, and what a pure one loses."""
    interpreted = interpreted_modules()
    if not interpreted and relay_path_built():
        return "compiled (mypyc signalling and media paths, C relay path)"
    if len(interpreted) == len(COMPILED_MODULES):
        return ("as pure Python: this install was not compiled (no C compiler at install time, or "
                "WS2SIP_PURE_PYTHON=1); same behaviour, about a third more CPU per call and "
                "several times more per relayed packet. Reinstall with gcc and the Python "
                "headers to compile it")
    parts = []
    if interpreted:
        parts.append(f"partly compiled ({', '.join(interpreted)} run as Python)")
    if not relay_path_built():
        parts.append("the C relay path is not built")
    return "; ".join(parts) or "compiled"
