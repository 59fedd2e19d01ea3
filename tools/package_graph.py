"""The package diagram of docs/architecture.md, drawn from the code's real imports.

Every `import` statement under megacrystal/ and data_tools/ (lazy ones inside functions included) is read
with `ast`; a module counts as its top-level unit (`megacrystal.checkpoint.writer` -> `checkpoint`,
`megacrystal.log` -> `log`, anything in data_tools/ -> `data_tools`). The diagram shows the transitive
reduction of unit-level edges (an edge implied by a longer path is left out), so it stays small.

    python tools/package_graph.py            # print the diagram
    python tools/package_graph.py --write    # rewrite it between the markers in docs/architecture.md
    python tools/package_graph.py --check    # exit 1 on drift, a unit-level cycle or a private import

`megacrystal.cli` loads its commands by name (importlib) and so draws no edges.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("megacrystal", "data_tools")
DOC = ROOT / "docs" / "architecture.md"
BEGIN, END = "<!-- package-graph: begin (tools/package_graph.py --write) -->", "<!-- package-graph: end -->"
# (importing module, imported private module): the compiled C++ extension, named by setup.py/CMakeLists.txt,
# is imported only by its own package's loader.
ALLOWED_PRIVATE = {("megacrystal.compiled.native", "megacrystal.compiled._native")}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if parts[0] == "megacrystal" and len(parts) > 1 else parts[0]


def _first_party(module: str) -> bool:
    return module.split(".")[0] in SOURCES


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def imports(path: Path, root: Path = ROOT) -> list[tuple[str, list[str], int]]:
    """(absolute imported module, imported names, line) for every first-party import in one file."""
    mod = module_name(path, root)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if _first_party(a.name)]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if _first_party(target):
                out.append((target, [a.name for a in node.names], node.lineno))
    return out


def scan(root: Path = ROOT) -> tuple[dict[str, set[str]], list[str]]:
    """Unit-level edges {unit: units it imports} and the private-name violations, for the tree at root.
    The package's own `__init__` (the version) is no unit."""
    edges: dict[str, set[str]] = {}
    bad = []
    for path in sorted(p for s in SOURCES for p in (root / s).rglob("*.py")):
        mod = module_name(path, root)
        if mod != "megacrystal":
            edges.setdefault(unit(mod), set())
        for target, names, line in imports(path, root):
            if mod != "megacrystal" and target != "megacrystal" and unit(target) != unit(mod):
                edges[unit(mod)].add(unit(target))
            # `from pkg import name` may name a submodule: judge the full dotted path either way
            for full in [target] + [f"{target}.{n}" for n in names]:
                here = full.split(".")
                if any(_private(p) for p in here[1:]) and (mod, full) not in ALLOWED_PRIVATE:
                    bad.append(f"{path.relative_to(root)}:{line}: imports private {full}")
    return edges, bad


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def reduce(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """Transitive reduction of an acyclic graph: drop u->w when another path u->...->w exists."""

    def reach(u: str, skip: str) -> set[str]:
        seen, todo = set(), [x for x in edges.get(u, ()) if x != skip]
        while todo:
            x = todo.pop()
            if x not in seen:
                seen.add(x)
                todo += edges.get(x, ())
        return seen

    return {u: {w for w in ws if w not in reach(u, w)} for u, ws in edges.items()}


def render(edges: dict[str, set[str]]) -> str:
    red = reduce(edges)
    lines = ["```mermaid", "graph TD"]
    lines += [f"  {u} --> {w}" for u in sorted(red) for w in sorted(red[u])]
    lonely = sorted(u for u in edges if not red[u] and not any(u in ws for ws in red.values()))
    lines += [f"  {u}" for u in lonely]
    return "\n".join(lines + ["```"])


def embed(doc: str, diagram: str) -> str:
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{DOC}: markers {BEGIN!r} ... {END!r} not found")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{diagram}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="rewrite the diagram in docs/architecture.md")
    ap.add_argument("--check", action="store_true", help="exit 1 on drift, a cycle or a private import")
    args = ap.parse_args(argv)
    edges, bad = scan()
    problems = bad + [f"package-level import cycle: {' <-> '.join(c)}" for c in cycles(edges)]
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    diagram = render(edges)
    doc = DOC.read_text()
    if args.write:
        DOC.write_text(embed(doc, diagram))
    elif args.check:
        if embed(doc, diagram) != doc:
            print(
                f"{DOC.relative_to(ROOT)}: package diagram is stale; run python tools/package_graph.py --write",
                file=sys.stderr,
            )
            return 1
    else:
        print(diagram)
    return 0


if __name__ == "__main__":
    sys.exit(main())
