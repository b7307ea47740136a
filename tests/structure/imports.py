"""The import graph of the installed `selfsup` namespace, read from the source (no module is run).

`python tests/structure/imports.py` prints the drawing: the packages, the arrows between them
with how many imports each carries, and any circle among modules. Every import counts, those
inside functions too (a lazy import still ties two modules together).
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The folders of the namespace, as pyproject.toml's package-dir maps them.
PACKAGES = {"selfsup": ROOT / "selfsup", "selfsup.pipeline": ROOT / "pipeline", "selfsup.methods": ROOT / "methods",
            "selfsup.trainer": ROOT / "trainer", "selfsup.cluster": ROOT / "cluster"}


def modules() -> dict[str, Path]:
    """Every module of the namespace: dotted name -> file."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            relative = path.relative_to(folder).with_suffix("")
            parts = [part for part in relative.parts if part != "__init__"]
            if package == "selfsup" and parts and parts[0] in ("pipeline", "methods", "trainer", "cluster"):
                continue
            found[".".join([package, *parts])] = path
    return found


def _imported_names(path: Path, module: str) -> list[str]:
    """The dotted names a module imports (absolute, relative ones resolved), in any scope."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            names.append(base)
            names.extend(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the namespace modules it imports (a package's __init__ counts as the package)."""
    known = modules()
    graph = {}
    for module, path in known.items():
        targets = {name for name in _imported_names(path, module) if name in known and name != module}
        graph[module] = targets
    return graph


def external_imports() -> dict[str, set[str]]:
    """module -> the top-level names of the distributions outside the namespace it imports."""
    known = modules()
    result = {}
    for module, path in known.items():
        result[module] = {name.split(".")[0] for name in _imported_names(path, module)
                          if name and not name.startswith("selfsup")}
    return result


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, groups, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(10000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and f"selfsup.{parts[1]}" in PACKAGES else module


def drawing() -> str:
    """The package arrows with their import counts, then the circles (none, one hopes)."""
    graph = import_graph()
    arrows = defaultdict(int)
    for module, targets in graph.items():
        for target in targets:
            source, destination = package_of(module), package_of(target)
            if source != destination:
                arrows[(source, destination)] += 1
    lines = ["selfsup import graph (module imports between packages; selfsup.X leaf modules by name)"]
    lines += [f"  {source:28s} -> {destination:28s} {count:3d}" for (source, destination), count in sorted(arrows.items())]
    found = circles(graph)
    lines.append(f"circles: {len(found)}")
    lines += ["  " + " <-> ".join(group) for group in found]
    return "\n".join(lines)


if __name__ == "__main__":
    print(drawing())
