"""Compiles the per-message signalling path and the per-packet media path to C with mypyc;
everything else is in pyproject.toml.

The parser, grammar and digest code, the transaction and transport layers, the proxy, the
registrar and the location model run for every SIP message; the media relay's sockets, SRTP
calls, forwarding and legs (webrtc/datagram, srtp, ice_media, forwarding, plain, webrtc_leg)
for every RTP packet. They are plain typed Python, and mypyc compiles them unchanged to C
extensions (the list is gateway/compiled.py). That cuts the gateway's CPU per call by about a
third. webrtc/_relaypath.c is the relay's hand-written C fast path for latched, relay-only media
(see its header); without it (or with WS2SIP_RELAY_PUMP=0 at run time) the compiled or
interpreted Python path relays every packet.

What the compiled build rests on, and why:
- mypyc compiles against the types of the libraries the compiled modules import (aioice,
  pylibsrtp, redis, ...). Those libraries must be installed when it runs: a class typed `Any`
  because its package was missing compiles to a wrong object layout (a compiled subclass of
  aioice's StunProtocol corrupted memory on a fresh install, where pip built ws2sip before
  installing aioice). So there is no --ignore-missing-imports: a missing library fails the build,
  naming it. The README's install and the tests build with --no-build-isolation inside a
  virtualenv that already holds the locked versions (deploy/requirements.lock), so the build
  sees exactly what runs; a plain isolated `pip install .` gets them from pyproject's
  [build-system] requires, which repeat the runtime dependencies for this reason.
- Compiled classes that subclass a Python class of another package (MediaFirstProtocol from
  aioice's StunProtocol; the asyncio protocols) are compiled knowing that base, which mypyc
  supports; `ws2sip selfcheck` (gateway/selfcheck.py) creates an instance of every compiled
  class in a fresh interpreter, the tests run it on a fresh install, and the container build
  runs it too.
- No C compiler (or WS2SIP_PURE_PYTHON=1): the modules install as Python, with identical
  behaviour, only slower; the build says so, and the gateway logs it at start-up.
"""

import os
import runpy
import sys
import tempfile

from setuptools import Extension, setup

# Not compiled: sip/flow.py (its Flow base class is subclassed by interpreted code, which
# compiled classes forbid), webrtc/ice.py (subclasses aioice's Connection; its per-packet part
# is webrtc/ice_media.py), start-up, configuration, HTTP, Redis, DTLS, SDP and the media
# session logic, where the time is not spent.
BUILD_MANIFEST = runpy.run_path(os.path.join("gateway", "compiled.py"))
COMPILED_MODULES, MYPYC_ARGS = BUILD_MANIFEST["COMPILED_MODULES"], BUILD_MANIFEST["MYPYC_ARGS"]

RELAY_PATH = Extension(
    "webrtc._relaypath", sources=["webrtc/_relaypath.c"], extra_compile_args=["-O2"],
    optional=True,
)


def say(message: str) -> None:
    print(f"ws2sip setup: {message}", file=sys.stderr, flush=True)


def c_compiler_problem() -> str | None:
    """Why C extensions cannot be built here (None when a compiler and Python's headers work)."""
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.errors import CCompilerError, DistutilsError
    from setuptools._distutils.sysconfig import customize_compiler, get_python_inc

    compiler = new_compiler()
    customize_compiler(compiler)
    with tempfile.TemporaryDirectory() as work:
        source = os.path.join(work, "probe.c")
        with open(source, "w") as file:
            file.write("#include <Python.h>\nint probe(void) { return Py_IsNone(Py_None); }\n")
        try:
            compiler.compile([source], output_dir=work, include_dirs=[get_python_inc()])
        except (CCompilerError, DistutilsError, OSError) as error:
            return f"{type(error).__name__}: {str(error)[:160]}"
    return None


def compiled_extensions() -> list:
    if os.environ.get("WS2SIP_PURE_PYTHON") == "1":
        say("WS2SIP_PURE_PYTHON=1: installing as pure Python (nothing compiled)")
        return []
    problem = c_compiler_problem()
    if problem is not None:
        say(f"no working C compiler ({problem}): installing as pure Python, same behaviour, "
            "about a third more CPU per call; install gcc and the Python headers and reinstall "
            "to compile")
        return []
    from mypyc.build import mypycify

    say(f"compiling {len(COMPILED_MODULES)} modules with mypyc, and the C relay path")
    return [*mypycify([*MYPYC_ARGS, *COMPILED_MODULES], opt_level="3"), RELAY_PATH]


setup(ext_modules=compiled_extensions())
