"""The package layering, read from the source: imports flow gateway -> sip, webrtc only; sip/
knows nothing of Redis, WebRTC or aiohttp; and no module imports itself back through others
(an import circle), counting every module-level import, those under TYPE_CHECKING included:
a circle only the type checker follows still ties the modules into one unit to read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("sip", "gateway", "webrtc")
# What each package may not import, at load time or for types.
FORBIDDEN = {
    "sip": ("gateway", "webrtc", "redis", "aiohttp", "aioice", "aiortc", "pylibsrtp"),
    "webrtc": ("gateway",),
    "gateway": (),
}


def module_files() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (REPO_ROOT / package).rglob("*.py"):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def imports_of(name: str, path: Path, *, module_level_only: bool) -> set[str]:
    """Absolute names of what `path` imports (package and, for `from x import y`, x.y): at
    module level (TYPE_CHECKING blocks included), or anywhere in the module."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for statement in statements:
            if isinstance(statement, ast.Import):
                found.update(alias.name for alias in statement.names)
            elif isinstance(statement, ast.ImportFrom):
                if statement.level:
                    base = package[:len(package) - statement.level + 1]
                    module = ".".join([*base, *([statement.module] if statement.module else [])])
                else:
                    module = statement.module or ""
                found.add(module)
                found.update(f"{module}.{alias.name}" for alias in statement.names)
            elif isinstance(statement, (ast.If, ast.Try, ast.With)):
                visit(statement.body)
                visit(getattr(statement, "orelse", []))
                for handler in getattr(statement, "handlers", []):
                    visit(handler.body)
                visit(getattr(statement, "finalbody", []))
            elif not module_level_only and isinstance(
                    statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(statement.body)

    visit(ast.parse(path.read_text()).body)
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_downwards(package: str) -> None:
    modules = module_files()
    wrong = sorted(
        f"{name} imports {imported}"
        for name, path in modules.items() if name.split(".")[0] == package
        for imported in imports_of(name, path, module_level_only=False)
        if imported.split(".")[0] in FORBIDDEN[package])
    assert not wrong, "\n".join(wrong)


def test_no_import_circles() -> None:
    modules = module_files()
    graph = {name: {imported for imported in imports_of(name, path, module_level_only=True)
                    if imported in modules and imported != name}
             for name, path in modules.items()}
    circles: list[list[str]] = []
    # Tarjan's strongly connected components: any with more than one module is a circle.
    index: dict[str, int] = {}
    lowest: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        index[module] = lowest[module] = len(index)
        stack.append(module)
        for imported in graph[module]:
            if imported not in index:
                visit(imported)
                lowest[module] = min(lowest[module], lowest[imported])
            elif imported in stack:
                lowest[module] = min(lowest[module], index[imported])
        if lowest[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    assert not circles, f"import circles: {circles}"
