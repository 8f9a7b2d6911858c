"""Check that the metalr package's import graph has no cycle and no upward import.

    python scripts/check_imports.py [ROOT]     # exit 0 and a one-line summary, or 1 and every problem

Every `import` / `from ... import` in every module counts, including the ones
inside functions (a lazy import only hides a cycle, it does not remove it);
imports under `if TYPE_CHECKING:` do not (they never run). `from metalr.x import y`
is an edge to `metalr.x.y` when that is a module, else to `metalr.x`.

Upward imports: the package is layered (`LAYERS`, lowest first); a module may
import its own layer and those below, never one above (e.g. an estimator may
not import the training harness, a model may not import a task). A module
missing from `LAYERS` is reported, so a new one gets placed deliberately.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "metalr"

#: Lowest first. A module belongs to the layer of its longest matching prefix ("metalr" alone: only the top package).
LAYERS: list[list[str]] = [
    [
        "metalr._version",
        "metalr.registry",
        "metalr.io",
        "metalr.config",
        "metalr.testing",
        "metalr.hub",
        "metalr.gradstats",
        "metalr.distributed",
        "metalr.signals",
    ],
    ["metalr.metrics", "metalr.text_metrics", "metalr.models"],
    ["metalr.tasks"],
    ["metalr.ensemble", "metalr.estimators"],
    ["metalr.controllers", "metalr.meta"],
    ["metalr.train"],
    ["metalr.evaluation", "metalr.integrations", "metalr.contrib"],
    ["metalr"],
]


def layer(module: str) -> int | None:
    """Index in `LAYERS` of the longest prefix of `module` (None when none matches)."""
    best: tuple[int, int] | None = None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or (p != PACKAGE and module.startswith(p + "."))) and (best is None or len(p) > best[0]):
                best = (len(p), i)
    return None if best is None else best[1]


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
    out += [f"no layer: {m} is in no entry of LAYERS" for m in sorted(graph) if layer(m) is None]
    for m in sorted(graph):
        for t in sorted(graph[m]):
            lm, lt = layer(m), layer(t)
            if lm is not None and lt is not None and lt > lm:
                out.append(f"upward import: {m} (layer {lm}) imports {t} (layer {lt})")
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0]).resolve() if args else ROOT  # another checkout, e.g. to compare before/after
    found = problems(root)
    graph = edges(modules(root))
    for line in found:
        print(line)
    n_edges = sum(len(v) for v in graph.values())
    print(f"{len(graph)} modules in {len(LAYERS)} layers, {n_edges} import edges: " + (f"{len(found)} problem(s)" if found else "no cycle, no upward import"))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
