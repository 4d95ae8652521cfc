"""The import graph of ``autosam/`` has no cycle, counting the imports inside functions too.

An import hidden inside a function to break a cycle still is a cycle: the two modules cannot be read
(or tested) one without the other, and the order in which they happen to be imported decides whether
the program starts. Imports inside functions are for optional or heavy third-party dependencies (and
for start-up time); between autosam modules they must follow the same layering as the top-level ones.

Run ``python tests/test_import_graph.py`` to print the graph's cycles."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "autosam"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every Import/ImportFrom node of ``tree`` at any depth, except under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph(root: Path = ROOT) -> dict[str, dict[str, int]]:
    """``{module: {imported autosam module: line of the first such import}}``, imports at any depth.

    ``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to ``a.b``; a relative
    import is resolved against the importing module's package."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, dict[str, int]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        edges: dict[str, int] = {}
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in files else source for a in node.names]
            for target in targets:
                while target and target not in files:  # "import a.b.c" where c is an attribute: a.b
                    target = target.rpartition(".")[0]
                if target and target != name and (target == PACKAGE or target.startswith(PACKAGE + ".")):
                    edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a list of
    modules, plus one shortest cycle through its first module for the message."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # recursion depth is bounded by the number of modules (~200)
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(components)


def shortest_cycle(graph: dict[str, dict[str, int]], start: str, within: set[str]) -> list[str]:
    """A shortest import path ``start -> ... -> start`` inside one component (breadth first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in graph[v]:
                if w not in within:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, v, start]
                if w not in previous:
                    previous[w] = v
                    following.append(w)
        frontier = following
    return [start]


def describe(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def cycle_report(graph: dict[str, dict[str, int]]) -> list[str]:
    lines = []
    for component in find_cycles(graph):
        lines.append(f"{len(component)} modules import each other: {', '.join(component)}\n"
                     f"    e.g. {describe(graph, shortest_cycle(graph, component[0], set(component)))}")
    return lines


# ---------------------------------------------------------------------------------------------- tests
def test_the_detector_sees_imports_inside_functions(tmp_path):
    """A cycle made of one top-level and one function-level import is found, and one through a
    relative import; ``if TYPE_CHECKING:`` imports do not count (they never run)."""
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from autosam.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from autosam.a import g\n")
    (pkg / "sub" / "c.py").write_text("from . import d\n")
    (pkg / "sub" / "d.py").write_text("import autosam.sub.c as c\n")
    (pkg / "e.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from autosam import f\n")
    (pkg / "f.py").write_text("import autosam.e\n")
    graph = import_graph(pkg)
    assert graph["autosam.sub.b"] == {"autosam.a": 2}
    assert find_cycles(graph) == [["autosam.a", "autosam.sub.b"], ["autosam.sub.c", "autosam.sub.d"]]
    assert "autosam.e -> autosam.f" not in "\n".join(cycle_report(graph))


def test_autosam_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 100 and "autosam.inference.predictor" in graph  # the real package was read
    report = cycle_report(graph)
    assert not report, "import cycles among autosam modules (imports inside functions included):\n" + "\n".join(report)


if __name__ == "__main__":
    found = cycle_report(import_graph())
    print("\n".join(found) or "no import cycle")
    sys.exit(1 if found else 0)
