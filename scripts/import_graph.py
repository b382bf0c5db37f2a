#!/usr/bin/env python3
"""
The import graph of the ``pns4ones`` package, read from the source (nothing is
imported): every ``import`` and ``from ... import`` between its modules, at
module level or inside functions (a lazy import is still a dependency), except
those under ``if TYPE_CHECKING:``.

Checks that the graph has no cycle and that no module imports a private name
(``_x``) of another module, and prints the modules by size.  Exit code 1 when a
check fails.  ``tests/test_import_graph.py`` runs the same checks.

Usage: ``scripts/import_graph.py [--dot] [SRC]`` (SRC: the directory holding
``pns4ones``, default ``src``).
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "pns4ones"


@dataclass
class Graph:
    """Modules (dotted names) -> the package modules they import, and what the checks found."""

    files: dict[str, Path] = field(default_factory=dict)
    edges: dict[str, set[str]] = field(default_factory=dict)
    private: list[str] = field(default_factory=list)
    factories: list[str] = field(default_factory=list)

    def cycles(self) -> list[list[str]]:
        """Strongly connected components of more than one module (or a module importing itself), Tarjan's algorithm."""
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on_stack: set[str] = set()
        out: list[list[str]] = []

        def visit(node: str) -> None:
            index[node] = low[node] = len(index)
            stack.append(node)
            on_stack.add(node)
            for succ in sorted(self.edges.get(node, ())):
                if succ not in index:
                    visit(succ)
                    low[node] = min(low[node], low[succ])
                elif succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in self.edges.get(node, ()):
                    out.append(sorted(component))

        for node in sorted(self.files):
            if node not in index:
                visit(node)
        return out

    def sizes(self) -> list[tuple[int, str]]:
        return sorted(((len(path.read_text(encoding="utf-8").splitlines()), name) for name, path in self.files.items()), reverse=True)


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement outside ``if TYPE_CHECKING:`` blocks, and whether it is inside a function."""
    out: list[tuple[ast.Import | ast.ImportFrom, bool]] = []

    def walk(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for other in child.orelse:
                    walk(other, in_function)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                out.append((child, in_function))
            walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    walk(tree, False)
    return out


def build(src: Path) -> Graph:
    graph = Graph()
    for path in sorted((src / PACKAGE).rglob("*.py")):
        graph.files[_module_name(src, path)] = path
    for name, path in graph.files.items():
        is_package = path.name == "__init__.py"
        here = name if is_package else name.rpartition(".")[0]
        targets: set[str] = set()
        for node, in_function in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            found: set[str] = set()
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                        found.add(alias.name)
                _add(graph, name, is_package and in_function, found, targets)
                continue
            if node.level:
                base_parts = here.split(".")
                base = ".".join(base_parts[: len(base_parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if module != PACKAGE and not module.startswith(PACKAGE + "."):
                continue
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                if submodule in graph.files:
                    found.add(submodule)
                    continue
                found.add(module)
                if alias.name.startswith("_") and not alias.name.startswith("__") and module != name:
                    graph.private.append(f"{name} imports the private name {alias.name} of {module}")
            _add(graph, name, is_package and in_function, found, targets)
        graph.edges[name] = {t for t in targets if t in graph.files and t != name} | ({name} if name in targets else set())
    return graph


def _add(graph: Graph, name: str, factory: bool, found: set[str], targets: set[str]) -> None:
    for target in found:
        if factory and target.startswith(name + "."):
            graph.factories.append(f"{name} -> {target}")
        else:
            targets.add(target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("src", nargs="?", default=str(Path(__file__).resolve().parent.parent / "src"))
    parser.add_argument("--dot", action="store_true", help="print the graph in Graphviz dot")
    args = parser.parse_args(argv)
    graph = build(Path(args.src))
    if args.dot:
        print("digraph pns4ones {")
        for name in sorted(graph.edges):
            for target in sorted(graph.edges[name]):
                print(f'  "{name}" -> "{target}";')
        print("}")
        return 0
    cycles = graph.cycles()
    edges = sum(len(e) for e in graph.edges.values())
    print(f"{len(graph.files)} modules, {edges} imports between them")
    print(f"cycles: {len(cycles)}")
    for cycle in cycles:
        print("  " + " <-> ".join(cycle))
    print(f"private names imported from another module: {len(graph.private)}")
    for line in graph.private:
        print("  " + line)
    print(f"factory imports (a package's __init__ importing its own submodule inside a function, not edges): {len(graph.factories)}")
    for line in sorted(graph.factories):
        print("  " + line)
    print("largest modules (lines):")
    for lines, name in graph.sizes()[:5]:
        print(f"  {lines:5} {name}")
    return 1 if cycles or graph.private else 0


if __name__ == "__main__":
    sys.exit(main())
