"""The floors of the house (issue "One family, one place"): the package's import graph, lazy imports inside
functions included, has no cycle between its parts, and no part imports a higher floor.

    _numerics, _errors, _progress, _version, _hooks, _manifest, _checkout, data  <  layers  <  models  <  certification,
    convert  <  auditing, verification, attack, reported  <  hub, train  <  _factory (the factory: builds, then asks the hub for
    weights)  <  cli (the one command), the package root

A layer knows no model, the models never import the hub (the hub installs its weights loader into the builder),
the certifier knows head rules, not families.
"""
from __future__ import annotations

import ast
from pathlib import Path

import lipzoo

PACKAGE = Path(lipzoo.__file__).resolve().parent
FLOORS = {
    "_numerics": 0, "_errors": 0, "_progress": 0, "_version": 0, "_hooks": 0, "_manifest": 0, "_checkout": 0,
    "data": 0,
    "layers": 1,
    "models": 2,
    "certification": 3, "convert": 3,
    "auditing": 4, "verification": 4, "attack": 4, "reported": 4,
    "hub": 5, "train": 5,
    "_factory": 6,
    "cli": 7, "__main__": 7, "": 7,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every ``lipzoo`` module ``path`` imports, at module level or inside a function."""
    name, is_package = _module_name(path), path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                out |= {target} if node.module else {f"{target}.{a.name}" for a in node.names}
            elif node.module and node.module.split(".")[0] == "lipzoo":
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "lipzoo"}
    return out


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        src = _unit(_module_name(path))
        edges.setdefault(src, set()).update(u for u in map(_unit, _imports(path)) if u != src)
    return edges


def test_every_part_of_the_package_has_a_floor():
    units = {_unit(_module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert units <= set(FLOORS), f"give these a floor in tests/test_floors.py: {sorted(units - set(FLOORS))}"


def test_no_part_imports_a_higher_floor():
    upward = [f"{a or 'lipzoo'} (floor {FLOORS.get(a)}) imports {b or 'lipzoo'} (floor {FLOORS.get(b)})"
              for a, targets in _graph().items() for b in targets if FLOORS.get(b, 99) > FLOORS.get(a, -1)]
    assert not upward, "\n".join(sorted(upward))


def test_no_import_cycle_between_parts():
    graph = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_a_violation():
    """The checker itself: a synthetic upward edge and a cycle are found."""
    assert FLOORS["models"] < FLOORS["hub"]  # models -> hub would be reported as upward
    assert _unit("lipzoo.hub.download") == "hub" and _unit("lipzoo") == ""
    assert "lipzoo.models._builder" in _imports(PACKAGE / "hub" / "download.py")
