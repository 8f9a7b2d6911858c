"""Check that the metalr package's import graph has no cycle and no import of the top package.

    python scripts/check_imports.py            # exit 0 and a one-line summary, or 1 and every problem

Every `import` / `from ... import` in every module counts, including the ones
inside functions (a lazy import only hides a cycle, it does not remove it);
imports under `if TYPE_CHECKING:` do not (they never run). `from metalr.x import y`
is an edge to `metalr.x.y` when that is a module, else to `metalr.x`. Besides
cycles, a module other than `metalr/__init__.py` may not import the top package
`metalr` itself: that package re-exports the library, so importing it from inside
is an upward import.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "metalr"


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the package modules it imports."""
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative import: resolve against this module's package
                    anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                while t and t not in mods:  # `import metalr.x.y` of a non-module attribute path
                    t = t.rpartition(".")[0]
                if t and t != name:
                    graph[name].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(1000, 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return sorted(out)


def problems(root: Path = ROOT) -> list[str]:
    """Every cycle and upward import, as readable lines (empty: the graph is clean)."""
    graph = edges(modules(root))
    out = [f"import cycle: {' <-> '.join(c)}" for c in cycles(graph)]
    out += [f"upward import: {m} imports the top package {PACKAGE!r}" for m in sorted(graph) if m != PACKAGE and PACKAGE in graph[m]]
    return out


def main() -> int:
    found = problems()
    graph = edges(modules())
    for line in found:
        print(line)
    n_edges = sum(len(v) for v in graph.values())
    print(f"{len(graph)} modules, {n_edges} import edges: " + (f"{len(found)} problem(s)" if found else "no cycle, no upward import"))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
