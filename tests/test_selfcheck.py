"""`ws2sip selfcheck` (gateway/selfcheck.py): a fresh interpreter imports every compiled module
and creates an instance of each of their classes, compiled or pure Python; the problems it can
report (no factory, a factory or a use that raises, a module that does not import) are reported
with the class or module they concern."""

from __future__ import annotations

import importlib
import inspect
import io
import re
import shutil
import subprocess
import sys
from abc import ABC, abstractmethod
from enum import Enum
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Protocol

import pytest

from gateway import compiled, selfcheck

REPO_ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60.0
SUMMARY = re.compile(
    r"ws2sip selfcheck: (?P<modules>\d+) modules(?P<relay_path> \+ webrtc\._relaypath)?, "
    r"(?P<classes>\d+) classes, (?P<how>.+)\n"
)
# What this module's dummy classes claim as their module: no factory table entry names it.
DUMMY_MODULE = "tests.selfcheck_dummies"


def compiled_module_names() -> list[str]:
    return [compiled.module_name(path) for path in compiled.COMPILED_MODULES]


def defined_classes(module: ModuleType) -> int:
    """Counted here independently of gateway.selfcheck's own discovery."""
    return len({id(value) for _, value in inspect.getmembers(module, inspect.isclass)
                if value.__module__ == module.__name__})


def class_count(*, with_relay_path: bool) -> int:
    modules = [importlib.import_module(name) for name in compiled_module_names()]
    if with_relay_path:
        modules.append(importlib.import_module(compiled.RELAY_PATH_MODULE))
    return sum(map(defined_classes, modules))


def selfcheck_command(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL)


# --- the command, in a fresh interpreter ---------------------------------------------------------
def test_selfcheck_creates_every_class_in_a_fresh_interpreter() -> None:
    done = selfcheck_command(["-m", "gateway", "selfcheck"], REPO_ROOT)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    summary = SUMMARY.fullmatch(done.stdout)
    assert summary is not None, done.stdout
    relay_path = compiled.relay_path_built()
    assert int(summary["modules"]) == len(compiled.COMPILED_MODULES)
    assert bool(summary["relay_path"]) == relay_path
    assert int(summary["classes"]) == class_count(with_relay_path=relay_path)
    assert summary["how"] == compiled.describe()


def test_selfcheck_passes_on_a_pure_python_install(tmp_path: Path) -> None:
    """The same classes, created from plain .py files: a copy of the packages' sources alone,
    imported without the editable install's finder (which would add the tree's C relay path)."""
    for package in ("sip", "gateway", "webrtc"):
        for source in (REPO_ROOT / package).rglob("*.py"):
            if "node_modules" not in source.parts:
                copy = tmp_path / source.relative_to(REPO_ROOT)
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, copy)
    program = (
        "import sys\n"
        "sys.meta_path[:] = [finder for finder in sys.meta_path\n"
        "                    if not getattr(finder, '__module__', '').startswith('__editable__')]\n"
        "from gateway.cli import main\n"
        "raise SystemExit(main(['selfcheck']))\n"
    )
    done = selfcheck_command(["-c", program], tmp_path)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    summary = SUMMARY.fullmatch(done.stdout)
    assert summary is not None, done.stdout
    assert summary["relay_path"] is None
    assert int(summary["modules"]) == len(compiled.COMPILED_MODULES)
    assert int(summary["classes"]) == class_count(with_relay_path=False)
    assert summary["how"].startswith("as pure Python"), summary["how"]


# --- what it reports ---------------------------------------------------------------------------
def test_a_class_without_a_factory_is_reported() -> None:
    from sip.uri import SipUri

    extra = type("Extra", (), {"__module__": "sip.uri"})
    report = selfcheck.check({"sip.uri": SimpleNamespace(SipUri=SipUri, Extra=extra)})
    assert report.problems == ["no factory for sip.uri.Extra: add one to gateway/selfcheck.py"]
    assert report.classes == 2


def test_only_the_classes_a_module_defines_are_checked() -> None:
    from sip.uri import SipUri

    namespace = SimpleNamespace(SipUri=SipUri, Alias=SipUri, Imported=Path, constant=3)
    assert selfcheck.classes_of("sip.uri", namespace) == [SipUri]


def raise_layout_error(*_: object) -> object:
    raise SystemError("error return without exception set")


@pytest.mark.parametrize(
    ("check", "problem"),
    [
        (selfcheck.new(raise_layout_error),
         "sip.uri.SipUri: its factory raised SystemError: error return without exception set"),
        (selfcheck.new(lambda kit: selfcheck.factories()["sip.uri.SipUri"].make(kit),
                       raise_layout_error),
         "sip.uri.SipUri: using the instance its factory made raised SystemError: error return "
         "without exception set"),
        (selfcheck.new(lambda kit: "sip:alice@example.com"),
         "sip.uri.SipUri: its factory should make an instance of it, and made a builtins.str"),
    ],
    ids=["factory raises", "use raises", "wrong class"],
)
def test_a_failing_factory_is_reported_with_its_class(
    check: selfcheck.Check, problem: str
) -> None:
    import sip.uri

    table = {**selfcheck.factories(), "sip.uri.SipUri": check}
    assert selfcheck.check({"sip.uri": sip.uri}, table).problems == [problem]


def test_a_factory_for_a_class_that_is_gone_is_reported() -> None:
    import sip.uri

    table = {**selfcheck.factories(), "sip.uri.Gone": selfcheck.new(raise_layout_error)}
    assert selfcheck.check({"sip.uri": sip.uri}, table).problems == [
        "a factory for sip.uri.Gone, which sip.uri does not define: remove it from "
        "gateway/selfcheck.py"
    ]


def test_classes_without_instances_of_their_own_are_checked_as_such() -> None:
    class Color(Enum):
        RED = "red"

    class Closer(Protocol):
        def close(self) -> None: ...

    class Base(ABC):
        @abstractmethod
        def run(self) -> int: ...

    class Concrete(Base):
        def run(self) -> int:
            return 1

    for cls in (Color, Closer, Base):
        cls.__module__, cls.__qualname__ = DUMMY_MODULE, cls.__name__
    namespace = SimpleNamespace(Color=Color, Closer=Closer, Base=Base)
    right = {
        f"{DUMMY_MODULE}.Color": selfcheck.member(lambda kit: Color.RED),
        f"{DUMMY_MODULE}.Closer": selfcheck.conforming(lambda kit: io.BytesIO()),
        f"{DUMMY_MODULE}.Base": selfcheck.subclass(lambda kit: Concrete(),
                                                   lambda base, kit: base.run()),
    }
    assert selfcheck.check({DUMMY_MODULE: namespace}, right).problems == []
    wrong = {
        f"{DUMMY_MODULE}.Color": selfcheck.member(lambda kit: "red"),
        f"{DUMMY_MODULE}.Closer": selfcheck.conforming(lambda kit: object()),
        f"{DUMMY_MODULE}.Base": selfcheck.new(lambda kit: Concrete()),
    }
    assert selfcheck.check({DUMMY_MODULE: namespace}, wrong).problems == [
        f"{DUMMY_MODULE}.Color: its factory should make {selfcheck.MEMBER}, and made a "
        f"builtins.str",
        f"{DUMMY_MODULE}.Closer: its factory should make {selfcheck.CONFORMING}, and made a "
        f"builtins.object without close",
        f"{DUMMY_MODULE}.Base: its factory should make {selfcheck.INSTANCE}, and made a "
        f"{__name__}.{Concrete.__qualname__}",
    ]


def test_a_module_that_does_not_import_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rest is still checked, in this interpreter this time."""
    monkeypatch.setattr(compiled, "COMPILED_MODULES",
                        (*compiled.COMPILED_MODULES, "sip/no_such_module.py"))
    assert selfcheck.run() == [
        "module sip.no_such_module did not import: ModuleNotFoundError: No module named "
        "'sip.no_such_module'"
    ]


# --- the compiled build ------------------------------------------------------------------------
@pytest.mark.skipif(bool(compiled.interpreted_modules()),
                    reason=f"not a compiled install: ws2sip runs {compiled.describe()}")
def test_a_compiled_install_runs_extension_modules() -> None:
    names = compiled_module_names()
    if compiled.relay_path_built():
        names.append(compiled.RELAY_PATH_MODULE)
    for name in names:
        module = importlib.import_module(name)
        assert (module.__file__ or "").endswith(tuple(EXTENSION_SUFFIXES)), module.__file__
        # Compiled through and through: not one function of the module is a Python function.
        interpreted = [key for key, value in vars(module).items()
                       if inspect.isfunction(value) and value.__module__ == name]
        assert interpreted == [], f"{name} defines Python functions"
