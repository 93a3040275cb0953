"""The import graph of the repository, read with ``ast`` (nothing is imported or run).

Every import counts: module level, inside functions, behind ``TYPE_CHECKING``. An edge goes
from a file to the file it names: ``from a.b import c`` is ``a/b/c.py`` if that module exists,
else ``a/b/__init__.py``; relative imports are resolved. Parent packages a dotted import
initialises on the way are not edges (they are not what the file asked for).

    python -m tools.import_graph                 # file → files it imports, as text
    python -m tools.import_graph --packages      # package → packages it imports
    python -m tools.import_graph --dot | dot -Tsvg > imports.svg
    python -m tools.import_graph --cycles        # the cycles between files; exit 1 if any

``tests/test_layout.py`` asserts the package rules and that the file graph is acyclic.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[1]
#: the top-level packages of this repository (what "ours" means).
PACKAGES: Final = ("vitalgate", "e86", "gatt", "gateway", "ingest", "ews", "simulators", "benchmarks", "tests",
                   "tools")
#: vitalgate holds both the vocabulary everyone imports (contract, config, broker) and the
#: composition root that wires the components together (the CLI and the demo): in the package
#: graph the root is its own node, ``vitalgate.cli``, so "gateway imports the contract" and
#: "the CLI imports the gateway" are not a cycle.
COMPOSITION_ROOT: Final = frozenset({"vitalgate.cli", "vitalgate.demo", "vitalgate.__main__"})


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Dotted name → file, for every ``.py`` file of ``packages`` under ``root``."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            found[module_name(path, root)] = path
    return found


def _resolve(name: str, known: Mapping[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is one of our modules (``None``: not ours)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def imports_of(module: str, path: Path, known: Mapping[str, Path]) -> set[str]:
    """The modules of ours that ``module`` (at ``path``) imports, anywhere in the file."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name, known)
                if target:
                    out.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            for alias in node.names:
                target = _resolve(f"{base}.{alias.name}", known) if alias.name != "*" else None
                if target is None or target != f"{base}.{alias.name}":
                    target = _resolve(base, known)
                if target:
                    out.add(target)
    out.discard(module)
    return out


def graph(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, set[str]]:
    """Module → the modules of ours it imports."""
    known = modules(root, packages)
    return {name: imports_of(name, path, known) for name, path in known.items()}


def package_of(module: str) -> str:
    """The node of ``module`` in the package graph: its top-level package, or ``vitalgate.cli``
    for the composition root."""
    return "vitalgate.cli" if module in COMPOSITION_ROOT else module.split(".")[0]


def package_graph(files: Mapping[str, set[str]]) -> dict[str, set[str]]:
    """Package (see :func:`package_of`) → the other packages its files import."""
    out: dict[str, set[str]] = {}
    for module, deps in files.items():
        top = package_of(module)
        out.setdefault(top, set()).update(package_of(d) for d in deps if package_of(d) != top)
    return out


def cycles(edges: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(start: str) -> None:  # iterative: no recursion limit on deep graphs
        nonlocal counter
        work: list[tuple[str, list[str]]] = [(start, sorted(edges.get(start, ())))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, todo = work[-1]
            if todo:
                nxt = todo.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(edges.get(nxt, ()))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def to_dot(edges: Mapping[str, set[str]]) -> str:
    lines = ["digraph imports {", "  rankdir=LR;", "  node [shape=box, fontsize=10];"]
    for node in sorted(edges):
        lines.append(f'  "{node}";')
        lines.extend(f'  "{node}" -> "{dep}";' for dep in sorted(edges[node]))
    lines.append("}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.import_graph", description=__doc__.splitlines()[0])
    parser.add_argument("--packages", action="store_true", help="top-level packages instead of files")
    parser.add_argument("--dot", action="store_true", help="Graphviz DOT instead of text")
    parser.add_argument("--cycles", action="store_true", help="print the cycles; exit 1 if there are any")
    parser.add_argument("--only", action="append", metavar="PACKAGE",
                        help="only these top-level packages (repeatable; default all of ours)")
    args = parser.parse_args(argv)
    edges = graph(packages=args.only or PACKAGES)
    if args.packages:
        edges = package_graph(edges)
    if args.cycles:
        found = cycles(edges)
        for component in found:
            print(" <-> ".join(component))
        print(f"{len(found)} cycles among {len(edges)} {'packages' if args.packages else 'files'}")
        return 1 if found else 0
    if args.dot:
        print(to_dot(edges))
    else:
        for node in sorted(edges):
            print(f"{node} -> {', '.join(sorted(edges[node])) or '(nothing of ours)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
