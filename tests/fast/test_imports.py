"""The package's import graph, read from its source: layers stay layers.

- Nothing outside ``backends/`` imports a particular backend (they are found by entry point).
- No two modules import each other, however lazily (function-level and TYPE_CHECKING imports
  count): the graph has no cycle at all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pytest_isolated_docker

PACKAGE = Path(pytest_isolated_docker.__file__).parent
NAME = "pytest_isolated_docker"
PARTICULAR_BACKENDS = (
    f"{NAME}.backends.dind",
    f"{NAME}.backends.socket",
    f"{NAME}.backends.machine",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(base: str, name: str) -> str:
    """``base.name`` when that is a module of the package, else ``base`` (an attribute)."""
    candidate = f"{base}.{name}" if name else base
    return candidate if candidate in MODULES else base


def imports_of(module: str) -> set[str]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith(NAME)}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = f"{base}.{node.module}" if node.module else base
            elif node.module and node.module.startswith(NAME):
                base = node.module
            else:
                continue
            found |= {_resolve(base, alias.name) for alias in node.names}
    found.discard(module)
    return {name for name in found if name in MODULES}


GRAPH = {module: imports_of(module) for module in MODULES}


def test_the_graph_is_read() -> None:
    # The reader must see the edges we know exist, or every check below passes vacuously.
    assert f"{NAME}.coordination" in GRAPH[f"{NAME}.reaper"]
    assert f"{NAME}.backends.base" in GRAPH[f"{NAME}.backends.dind"]
    assert f"{NAME}.factories" in GRAPH[f"{NAME}.fixtures"]


@pytest.mark.parametrize(
    "module", sorted(m for m in MODULES if not m.startswith(f"{NAME}.backends"))
)
def test_no_module_outside_backends_imports_a_particular_backend(module: str) -> None:
    particular = {
        imported
        for imported in GRAPH[module]
        if any(imported == b or imported.startswith(b + ".") for b in PARTICULAR_BACKENDS)
    }
    assert not particular, f"{module} imports {sorted(particular)}"


def _cycle_from(start: str) -> list[str] | None:
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for nxt in sorted(GRAPH[node]):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_cycle(module: str) -> None:
    cycle = _cycle_from(module)
    assert cycle is None, " -> ".join(cycle or [])
