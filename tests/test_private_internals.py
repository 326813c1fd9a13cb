"""The private internals of aiohttp, pylibsrtp and aioice that ws2sip touches, pinned.

gateway/ws_delivery.py replaces aiohttp's WebSocket frame queue and parser, gateway/websocket.py
reads a response's size limit, webrtc/srtp.py and webrtc/_relaypath.c call libsrtp through
pylibsrtp's cffi binding on a Session's own context and buffer. None of that is public API, so
the locks (deploy/requirements.lock, tests/requirements.lock) pin both libraries exactly, and
this test records what each internal looked like when the code using it was last checked: the
source of each Python function the fast paths depend on (hashed), the C signatures of the libsrtp
functions, the layout of a Session. webrtc/ice.py extends aioice's Connection: it adds its own
sockets to the connection's protocols (an ICE-TCP connection too, whose checks aioice's
check_incoming then handles), watches its nominated pairs and, once closed, drops the
cancelled checks' tasks from its check list (see IceConnection.close). A refreshed lock that
changes any of them fails here, naming the library and the attribute: read the new code, adapt
the code using it, then record the new fingerprint printed in the failure.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import os
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCKS = (REPO_ROOT / "deploy" / "requirements.lock", REPO_ROOT / "tests" / "requirements.lock")


def source_fingerprint(target: object) -> str:
    return hashlib.sha256(inspect.getsource(target).encode()).hexdigest()[:16]  # type: ignore[arg-type]


def _aiohttp_internals() -> dict[str, Callable[[], str]]:
    from aiohttp import web
    from aiohttp._websocket import reader_py  # the Python source Cython compiles as reader_c

    response = web.WebSocketResponse()
    return {
        "aiohttp._websocket.reader.WebSocketDataQueue":
            lambda: source_fingerprint(reader_py.WebSocketDataQueue),
        "aiohttp._websocket.reader.WebSocketReader.__init__":
            lambda: source_fingerprint(reader_py.WebSocketReader.__init__),
        "aiohttp.web.WebSocketResponse._post_start":
            lambda: source_fingerprint(web.WebSocketResponse._post_start),
        "aiohttp.web.RequestHandler.set_parser":
            lambda: source_fingerprint(web.RequestHandler.set_parser),
        "aiohttp.web.RequestHandler.__slots__ (_message_tail, _payload_parser)":
            lambda: str(all(name in web.RequestHandler.__slots__
                            for name in ("_message_tail", "_payload_parser"))),
        "aiohttp.web.WebSocketResponse (_loop, _max_msg_size, _reader, _parser)":
            lambda: str(all(hasattr(response, name)
                            for name in ("_loop", "_max_msg_size", "_reader", "_parser"))),
    }


def _c_type_of(ffi: Any, lib: Any, name: str) -> str:
    """The C type of one of a cffi library's functions."""
    text: str = ffi.getctype(ffi.typeof(getattr(lib, name)))
    return text


def _pylibsrtp_internals() -> dict[str, Callable[[], str]]:
    import pylibsrtp

    # cffi's compiled binding: no types of its own (its ffi and lib are typed Any).
    from pylibsrtp._binding import ffi, lib  # type: ignore[import-not-found]

    session = pylibsrtp.Session(pylibsrtp.Policy(
        key=os.urandom(30), ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    internals: dict[str, Callable[[], str]] = {
        f"pylibsrtp._binding.lib.{name}": partial(_c_type_of, ffi, lib, name)
        for name in ("srtp_protect", "srtp_unprotect", "srtp_protect_rtcp",
                     "srtp_unprotect_rtcp")
    }
    internals.update({
        "pylibsrtp.Session._srtp": lambda: ffi.getctype(ffi.typeof(session._srtp)),
        "pylibsrtp.Session._cdata": lambda: (f"{ffi.getctype(ffi.typeof(session._cdata))}"
                                             f"[{len(session._cdata)}]"),
        "pylibsrtp.Session._buffer": lambda: f"{type(session._buffer).__name__}"
                                             f"[{len(session._buffer)}]",
        # webrtc/_relaypath.c's MAX_SRTP_TRAILER (148) must cover both.
        "pylibsrtp.SRTP_MAX_TRAILER_LEN, SRTP_MAX_SRTCP_TRAILER_LEN":
            lambda: f"{pylibsrtp.SRTP_MAX_TRAILER_LEN}, {pylibsrtp.SRTP_MAX_SRTCP_TRAILER_LEN}",
        "pylibsrtp.Session.__init__": lambda: source_fingerprint(pylibsrtp.Session.__init__),
    })
    return internals


def _aioice_internals() -> dict[str, Callable[[], str]]:
    import aioice
    from aioice.ice import CandidatePair

    connection = aioice.Connection(ice_controlling=True, components=1)
    return {
        "aioice.Connection (_protocols, _nominated, _check_list)":
            lambda: str({name: type(getattr(connection, name)).__name__
                         for name in ("_protocols", "_nominated", "_check_list")}),
        # close() cancels the checks and keeps the pairs, each with its cancelled task.
        "aioice.Connection.close": lambda: source_fingerprint(aioice.Connection.close),
        "aioice.ice.CandidatePair.__init__ (task)":
            lambda: source_fingerprint(CandidatePair.__init__),
        # ICE-TCP (webrtc/ice_tcp.py): a connection accepted while the ICE connection is not
        # closing becomes one more protocol; check_incoming pairs it with the browser's address
        # (peer reflexive) and runs the triggered check on it.
        "aioice.Connection._closing": lambda: type(connection._closing).__name__,
        "aioice.Connection.check_incoming":
            lambda: source_fingerprint(aioice.Connection.check_incoming),
    }


_SRTP_CALL = "srtp_err_status_t(*)(struct srtp_ctx_t_ *, void *, int *)"
# What each internal was when the fast paths were last checked against it.
RECORDED: dict[str, dict[str, str]] = {
    "aioice": {
        "aioice.Connection (_protocols, _nominated, _check_list)":
            "{'_protocols': 'list', '_nominated': 'dict', '_check_list': 'list'}",
        "aioice.Connection.close": "25dcfac536f5f37c",
        "aioice.ice.CandidatePair.__init__ (task)": "897933a0565c1837",
        "aioice.Connection._closing": "bool",
        "aioice.Connection.check_incoming": "cb3e32bd47e5fa82",
    },
    "aiohttp": {
        "aiohttp._websocket.reader.WebSocketDataQueue": "526af2531df720ee",
        "aiohttp._websocket.reader.WebSocketReader.__init__": "ea518c1cea91584e",
        "aiohttp.web.WebSocketResponse._post_start": "5537cb3f2ecae6ed",
        "aiohttp.web.RequestHandler.set_parser": "bb548eb2b85d5c28",
        "aiohttp.web.RequestHandler.__slots__ (_message_tail, _payload_parser)": "True",
        "aiohttp.web.WebSocketResponse (_loop, _max_msg_size, _reader, _parser)": "True",
    },
    "pylibsrtp": {
        **{f"pylibsrtp._binding.lib.{name}": _SRTP_CALL
           for name in ("srtp_protect", "srtp_unprotect", "srtp_protect_rtcp",
                        "srtp_unprotect_rtcp")},
        "pylibsrtp.Session._srtp": "struct srtp_ctx_t_ * *",
        "pylibsrtp.Session._cdata": "char[][1500]",
        "pylibsrtp.Session._buffer": "buffer[1500]",
        "pylibsrtp.SRTP_MAX_TRAILER_LEN, SRTP_MAX_SRTCP_TRAILER_LEN": "144, 148",
        "pylibsrtp.Session.__init__": "2d5acb2032893aeb",
    },
}
PROBES: dict[str, Callable[[], dict[str, Callable[[], str]]]] = {
    "aioice": _aioice_internals,
    "aiohttp": _aiohttp_internals, "pylibsrtp": _pylibsrtp_internals,
}


def locked_version(lock: Path, distribution: str) -> set[str]:
    """The versions a lock pins for a distribution (one per environment marker)."""
    return set(re.findall(rf"^{distribution}==(\S+)", lock.read_text(), re.MULTILINE))


@pytest.mark.parametrize("library", sorted(RECORDED))
def test_locks_pin_the_installed_version_exactly(library: str) -> None:
    installed = importlib.metadata.version(library)
    for lock in LOCKS:
        assert locked_version(lock, library) == {installed}, (
            f"{lock.relative_to(REPO_ROOT)} pins {library} "
            f"{locked_version(lock, library) or 'not at all'}, installed is {installed}")


@pytest.mark.parametrize("library", sorted(RECORDED))
def test_private_internals_are_as_recorded(library: str) -> None:
    version = importlib.metadata.version(library)
    current = {name: probe() for name, probe in PROBES[library]().items()}
    assert current.keys() == RECORDED[library].keys()
    changed = [f"{library} {version}: {name} is now {value!r} (recorded "
               f"{RECORDED[library][name]!r})"
               for name, value in current.items() if value != RECORDED[library][name]]
    assert not changed, ("private internals ws2sip uses changed; adapt gateway/ws_delivery.py, "
                         "gateway/websocket.py, webrtc/srtp.py, webrtc/_relaypath.c or "
                         "webrtc/ice.py, then record:\n" + "\n".join(changed))
