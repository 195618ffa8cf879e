"""The import graph of SegVolSlicerLib and SegVolSlicer.py, and the house's rules over it (stdlib only).

    python tools/import_graph.py            # the violations (exit 1 if any is not on the allow-list)
    python tools/import_graph.py --graph    # every module with what it imports

Every `import` counts, at module level and inside functions (both run, both can close a cycle); imports
under `if TYPE_CHECKING:` do not (they never run). The rules (docs/architecture.md):
- no cycle among the modules;
- no import runs up the layers of LAYERS;
- a face (FACES) never imports inference/, and no module imports a face of another wing, except the
  faces' shared entry points (FACE_ENTRY_POINTS);
- no module imports another module's `_private` name (`from m import _x`, or `m._x` on an imported module).
Testing/Python/test_architecture.py runs the same checks.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE_FOLDER = ROOT / "SegVolSlicer"  # holds SegVolSlicer.py and the SegVolSlicerLib package
PACKAGE = "SegVolSlicerLib"

# Layers, lowest first: a module may import its own layer and those below. A module is placed by the longest
# prefix of its dotted name (relative to SegVolSlicerLib) listed here; SegVolSlicer.py is a face.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",
        (
            "__init__",
            "errors",
            "geometry",
            "prompts",
            "vocabulary",
            "terminology",
            "files",
            "reporting",
            "volume_checks",
            "wire",
            "runtime",  # device and precision choices: model/ and inference/ take them from here too
        ),
    ),
    ("model", ("model", "weights")),
    ("inference", ("inference",)),
    ("engine", ("engine",)),
    ("imageio", ("imageio", "markups", "dicom_series", "preview", "testing")),  # files in, segmentations out
    ("clinical", ("clinical", "evaluation")),  # DICOM SEG, statistics, confidence, the result files
    ("datasets", ("datasets", "campaign")),  # whole datasets; annotation campaigns over them
    ("faces", ("cli", "server", "client", "slicer", "SegVolSlicer")),
]

# The faces, by wing: a module of one wing never imports a module of another (nor inference/).
FACES: dict[str, tuple[str, ...]] = {
    "cli": ("cli",),
    "server": ("server", "client"),
    "slicer": ("slicer", "SegVolSlicer"),
}
# Modules of a face that the other wings may import: the Engine over HTTP (client.RemoteEngine), and the
# server's entry the CLI starts (`segvol serve`).
FACE_ENTRY_POINTS = ("client", "server", "server.app", "server.settings")

# Known violations, each named with the owner who removes it; the lead empties this list at merge. A rule
# broken that is not here fails the test; an entry here that no longer happens fails it too (the list shrinks).
ALLOWED: dict[str, str] = {}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module (dotted, relative to the module folder)
    target: str  # the imported module
    line: int
    names: tuple[str, ...] = ()  # the names taken from it (`from target import a, b`), or its attributes used


@dataclass
class Graph:
    modules: dict[str, Path]
    imports: list[Import] = field(default_factory=list)

    def edges(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {module: set() for module in self.modules}
        for imported in self.imports:
            if imported.target != imported.source:
                out[imported.source].add(imported.target)
        return out


def module_name(path: Path, folder: Path = MODULE_FOLDER) -> str:
    parts = path.relative_to(folder).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def find_modules(folder: Path = MODULE_FOLDER) -> dict[str, Path]:
    """Every module of the package and SegVolSlicer.py, by dotted name (a package by its own name)."""
    paths = [folder / "SegVolSlicer.py", *sorted((folder / PACKAGE).rglob("*.py"))]
    return {module_name(path, folder): path for path in paths if path.exists()}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(source: str, is_package: bool, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    base = source.split(".") if is_package else source.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


class _Collector(ast.NodeVisitor):
    def __init__(self, source: str, is_package: bool, modules: dict[str, Path]):
        self.source, self.is_package, self.modules = source, is_package, modules
        self.imports: list[Import] = []
        self.bound: dict[str, str] = {}  # local name -> module it names (for `m._private`)

    def _ours(self, name: str) -> bool:
        return name in self.modules

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if self._ours(alias.name):
                self.imports.append(Import(self.source, alias.name, node.lineno))
                if alias.asname:
                    self.bound[alias.asname] = alias.name

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        target = _resolve(self.source, self.is_package, node.level, node.module)
        if not self._ours(target):
            return
        plain = []
        for alias in node.names:
            submodule = f"{target}.{alias.name}"
            if self._ours(submodule):  # `from . import runtime`: the submodule itself
                self.imports.append(Import(self.source, submodule, node.lineno))
                self.bound[alias.asname or alias.name] = submodule
            else:
                plain.append(alias.name)
        if plain or not node.names:
            self.imports.append(Import(self.source, target, node.lineno, tuple(plain)))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.value, ast.Name) and node.value.id in self.bound and node.attr.startswith("_"):
            self.imports.append(Import(self.source, self.bound[node.value.id], node.lineno, (node.attr,)))
        self.generic_visit(node)


def build_graph(folder: Path = MODULE_FOLDER) -> Graph:
    modules = find_modules(folder)
    graph = Graph(modules)
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        collector = _Collector(name, path.name == "__init__.py", modules)
        collector.visit(tree)
        graph.imports += collector.imports
    return graph


def _short(module: str) -> str:
    return module.removeprefix(f"{PACKAGE}.") if module != PACKAGE else "__init__"


def _placed(module: str, table) -> str | None:
    """The entry of `table` ((name, prefixes) pairs) whose longest prefix names the module."""
    short, best, length = _short(module), None, -1
    for name, prefixes in table:
        for prefix in prefixes:
            if (short == prefix or short.startswith(prefix + ".")) and len(prefix) > length:
                best, length = name, len(prefix)
    return best


def layer_of(module: str) -> str | None:
    return _placed(module, LAYERS)


def wing_of(module: str) -> str | None:
    return _placed(module, FACES.items())


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    edges, index, low, stack, on_stack, found = graph.edges(), {}, {}, [], set(), []

    def visit(node: str) -> None:  # iterative: no recursion limit on deep graphs
        work = [(node, iter(sorted(edges[node])))]
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        while work:
            current, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[current] = min(low[current], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[current])
            if low[current] == index[current]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == current:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def violations(graph: Graph) -> list[str]:
    """Every broken rule, one line each (the keys of ALLOWED are such lines)."""
    ranks = {name: rank for rank, (name, _) in enumerate(LAYERS)}
    found = []
    for module in graph.modules:
        if layer_of(module) is None:
            found.append(f"unplaced: {_short(module)} is in no layer of tools/import_graph.py's LAYERS")
    for component in cycles(graph):
        found.append("cycle: " + " -> ".join(_short(m) for m in component))
    seen = set()
    for imported in graph.imports:
        source, target = imported.source, imported.target
        low, high = layer_of(source), layer_of(target)
        lines = []
        if low is not None and high is not None and ranks[high] > ranks[low]:
            lines.append(f"up: {_short(source)} ({low}) imports {_short(target)} ({high})")
        source_wing, target_wing = wing_of(source), wing_of(target)
        if source_wing is not None and layer_of(target) == "inference":
            lines.append(f"face imports inference: {_short(source)} imports {_short(target)}")
        if target_wing is not None and target_wing != source_wing and _short(target) not in FACE_ENTRY_POINTS:
            lines.append(f"imports another face: {_short(source)} imports {_short(target)} ({target_wing} wing)")
        for name in imported.names:
            if name.startswith("_") and not name.startswith("__"):
                lines.append(f"private: {_short(source)} uses {_short(target)}.{name}")
        for line in lines:
            if line not in seen:
                seen.add(line)
                found.append(line)
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graph", action="store_true", help="print every module and the modules it imports")
    args = parser.parse_args(argv)
    graph = build_graph()
    if args.graph:
        for module, targets in sorted(graph.edges().items()):
            print(f"{_short(module)} [{layer_of(module)}] -> {', '.join(sorted(map(_short, targets))) or '-'}")
        print()
    found = violations(graph)
    new = [line for line in found if line not in ALLOWED]
    for line in found:
        print(f"{line}  [allowed until fixed by: {ALLOWED[line]}]" if line in ALLOWED else line)
    for line in sorted(set(ALLOWED) - set(found)):
        print(f"fixed, remove from ALLOWED: {line}")
    print(f"{len(graph.modules)} modules, {len(found)} violation(s), {len(new)} not allowed")
    return 1 if new or set(ALLOWED) - set(found) else 0


if __name__ == "__main__":
    sys.exit(main())
