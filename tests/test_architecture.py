"""The shape of serve_app: no import circles, and each package imports only what lies below it.

Requests flow one way (HTTP or WebSocket -> ingress -> model -> engine), so an import that runs back up
(a model module reaching into the ingress, the store into the model) or a circle is a design error, not
a style matter. Every ``import`` is counted, those inside functions too: a lazy import still ties two
modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "serve_app"
# What each part of serve_app may import from serve_app, besides itself.
MAY_IMPORT: dict[str, set[str]] = {
    "config": set(),
    "errors": set(),
    "faults": {"errors"},  # the tests' fault injection switch, for both deployments
    "metrics": set(),
    "audio": {"errors"},
    "text": {"errors"},
    "hub": set(),
    "timing": {"config", "errors", "audio", "text", "hub"},
    "store": {"config", "errors"},
    "model": {"config", "errors", "faults", "metrics", "audio", "text", "store", "hub"},
    "jobs": {"config", "errors", "metrics", "audio", "text", "store", "model", "timing"},
    "ingress": {"config", "errors", "faults", "metrics", "audio", "text", "store", "model", "timing", "jobs"},
    "app": {"config", "ingress", "model", "jobs"},
    "cli": set(),  # the client command: the service's public HTTP and WebSocket API only
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports(path: Path) -> set[str]:
    """The serve_app modules ``path`` imports (``from package import module`` names the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("serve_app")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("serve_app"):
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & MODULES.keys()
            found |= submodules or {node.module}
    return found


GRAPH = {name: imports(path) & MODULES.keys() for name, path in MODULES.items()}


def part(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def test_there_is_no_import_circle() -> None:
    finished: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = [*path[path.index(module) :], module]
            raise AssertionError("import circle: " + " -> ".join(cycle))
        if module in finished:
            return
        for imported in sorted(GRAPH[module]):
            visit(imported, [*path, module])
        finished.add(module)

    for module in sorted(GRAPH):
        visit(module, [])


def test_each_package_imports_only_what_lies_below_it() -> None:
    upward = [
        f"{module} imports {imported}"
        for module, imported_modules in GRAPH.items()
        for imported in imported_modules
        if part(module) != part(imported) and part(imported) not in MAY_IMPORT[part(module)]
    ]
    assert not upward, "\n".join(sorted(upward))


def test_every_part_is_placed() -> None:
    """A new top-level module or package says where it stands before it is used."""
    parts = {part(module) for module in MODULES} - {"serve_app"}
    assert parts == MAY_IMPORT.keys()


def test_engines_never_import_their_chooser() -> None:
    choosers = [module for module, imported in GRAPH.items() if "serve_app.model.engine_factory" in imported]
    assert choosers == ["serve_app.model.deployment"]


MAX_MODULE_LINES = 400  # one job per module: past this, a module holds more than one


def test_no_module_is_over_400_lines() -> None:
    lengths = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    long = {name: lines for name, lines in lengths.items() if lines > MAX_MODULE_LINES}
    assert not long, f"split these along their seams (at most {MAX_MODULE_LINES} lines): {long}"
