"""The module loads in a stock 3D Slicer: what Slicer runs when it imports SegVolSlicer.py at start-up.

Slicer imports every scripted module at start-up, before SegVol could offer to install anything: one file-scope
import of a package Slicer does not bundle (httpx through the client, torch, highdicom...) and the module is
missing from the module list, with no way to install what it lacks. The Extensions Index's review asks the same
("Is any code executed at the file scope when a module is imported?", "Are any Python packages imported at the
file scope that are not from the Python Standard Library and not from Slicer, vtk, SimpleITK, numpy, and
scipy?", Slicer/ExtensionsIndex scripts/extension_ai_analysis.py).

Two views: the source (ast: every module the scripted module imports at load, followed through the package,
its file-scope imports and calls), and a run (SegVolSlicer imported with every package of the three requirement
files made unimportable, then what it loaded).
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import subprocess
import sys
import textwrap
from pathlib import Path

from packaging.requirements import Requirement

MODULE_DIR = Path(__file__).resolve().parents[2]
PACKAGE = "SegVolSlicerLib"
REQUIREMENT_FILES = sorted((MODULE_DIR / "Resources").glob("requirements*.txt"))
# What the Extensions Index accepts at file scope besides the standard library: Slicer's own modules (the
# application's qt, ctk and PythonQt included), vtk, SimpleITK, numpy and scipy.
SLICER_MODULES = {"slicer", "qt", "ctk", "PythonQt", "vtk", "vtkmodules", "SimpleITK", "sitkUtils", "numpy", "scipy"}
ALLOWED_AT_FILE_SCOPE = set(sys.stdlib_module_names) | SLICER_MODULES | {PACKAGE, "__future__"}
# File-scope calls that only build values (paths, loggers, types, locks, translated strings, constants);
# anything else runs code at import.
PURE_CALLS = {
    "_",  # slicer.i18n.tr
    "translate",
    "vtk.calldata_type",
    "lru_cache",
    "np.diag",
    "Reporter",  # reporting.NO_REPORT
    "slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName",
    "os.path.join",
    "os.path.dirname",
    "os.path.abspath",
    "os.path.realpath",
    "Path",
    "logging.getLogger",
    "re.compile",
    "frozenset",
    "set",
    "tuple",
    "dict",
    "list",
    "field",
    "dataclass",
    "TypeVar",
    "threading.Lock",
    "threading.RLock",
    "Choice",
}


def file_scope(tree: ast.Module):
    """The statements Python runs when it imports the file: module level, inside module-level if/try/with
    blocks and class bodies; not function bodies (nor `if TYPE_CHECKING:`)."""
    todo = list(tree.body)
    while todo:
        statement = todo.pop(0)
        if isinstance(statement, ast.If) and ast.unparse(statement.test).endswith("TYPE_CHECKING"):
            todo.extend(statement.orelse)
            continue
        yield statement
        if isinstance(statement, (ast.If, ast.Try, ast.With, ast.ClassDef)):
            for name in ("body", "orelse", "finalbody"):
                todo.extend(getattr(statement, name, []))
            for handler in getattr(statement, "handlers", []):
                todo.extend(handler.body)


def file_scope_calls(tree: ast.Module) -> list[ast.Call]:
    """Calls evaluated at import: in file-scope statements, class bases, decorators and default arguments,
    not inside the bodies of functions or lambdas (class bodies come from file_scope)."""
    calls = []

    def walk(node):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            arguments = [] if isinstance(node, ast.ClassDef) else [*node.args.defaults, *node.args.kw_defaults]
            bases = [*node.bases, *node.keywords] if isinstance(node, ast.ClassDef) else []
            decorators = [] if isinstance(node, ast.Lambda) else node.decorator_list
            for evaluated in [*decorators, *bases, *arguments]:
                if evaluated is not None:
                    walk(evaluated)
            return
        if isinstance(node, ast.Call):
            calls.append(node)
        for child in ast.iter_child_nodes(node):
            walk(child)

    for statement in file_scope(tree):
        if isinstance(statement, (ast.If, ast.Try, ast.With)):  # the test or context only: file_scope has the rest
            for evaluated in [getattr(statement, "test", None), *getattr(statement, "items", [])]:
                if evaluated is not None:
                    walk(evaluated)
        else:
            walk(statement)
    return calls


def dotted(node: ast.AST) -> str:
    """`os.path.join` for the callee of os.path.join(...); `<call>` where the callee is itself computed."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return "<call>"


def imported_names(tree: ast.Module, path: Path) -> list[str]:
    """Absolute dotted names of the modules a file imports at file scope (relative imports resolved; for
    `from X import y` both X and X.y, the latter only matters where it is a module)."""
    package = ".".join(path.relative_to(MODULE_DIR).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    names = []
    for statement in file_scope(tree):
        if isinstance(statement, ast.Import):
            names += [alias.name for alias in statement.names]
        elif isinstance(statement, ast.ImportFrom):
            base = statement.module or ""
            if statement.level:
                parent = package.rsplit(".", statement.level - 1)[0] if statement.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names += [base, *(f"{base}.{alias.name}" for alias in statement.names)]
    return names


def module_file(name: str) -> Path | None:
    """The file of one of the package's modules (or packages), None for anything else."""
    if name.split(".")[0] != PACKAGE:
        return None
    base = MODULE_DIR.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def load_time_modules() -> dict[Path, ast.Module]:
    """SegVolSlicer.py and every file of the package that importing it runs (parents' __init__ included)."""
    found, todo = {}, [MODULE_DIR / "SegVolSlicer.py"]
    while todo:
        path = todo.pop()
        if path in found:
            continue
        found[path] = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name in imported_names(found[path], path):
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__, a/b/c
                child = module_file(".".join(parts[:depth]))
                if child is not None:
                    todo.append(child)
    return found


def external_imports(tree: ast.Module, path: Path) -> set[str]:
    """Top-level names of the modules outside the package that a file imports at file scope."""
    return {name.split(".")[0] for name in imported_names(tree, path) if name and module_file(name) is None} - {PACKAGE}


def requirement_import_names() -> dict[str, str]:
    """import name -> the requirement line naming its distribution, for the three requirement files and torch
    (the import names as the installed distributions declare them, else the normalised distribution name)."""
    from SegVolSlicerLib.slicer import dependencies

    by_distribution = {}
    for modules_name, distributions in importlib.metadata.packages_distributions().items():
        for distribution in distributions:
            by_distribution.setdefault(distribution.lower().replace("-", "_"), set()).add(modules_name)
    names = {}
    for line in [dependencies.TORCH_REQUIREMENT] + [
        line for path in REQUIREMENT_FILES for line in dependencies.requirement_lines(path)
    ]:
        distribution = Requirement(line).name.lower().replace("-", "_")
        for module_name in by_distribution.get(distribution, {distribution}):
            names[module_name] = line
    return names


def test_the_requirement_files_are_the_three_features():
    """The blocked packages come from these files: a fourth file or a renamed one must be seen here."""
    assert [path.name for path in REQUIREMENT_FILES] == [
        "requirements-client.txt",
        "requirements-dicom.txt",
        "requirements.txt",
    ]
    blocked = requirement_import_names()
    assert {"torch", "monai", "transformers", "httpx", "blosc2", "highdicom"} <= set(blocked), blocked


def test_the_load_time_modules_are_followed_through_the_package():
    """The walk itself: it reaches the panel's Slicer helpers and the packages' __init__ files."""
    names = {str(path.relative_to(MODULE_DIR)) for path in load_time_modules()}
    assert {"SegVolSlicer.py", f"{PACKAGE}/__init__.py", f"{PACKAGE}/slicer/__init__.py"} <= names, names
    assert f"{PACKAGE}/slicer/connection.py" in names and f"{PACKAGE}/slicer/dependencies.py" in names, names


def test_no_file_scope_import_outside_slicers_bundled_packages():
    """httpx (client.py through slicer/connection.py), blosc2, highdicom, torch, packaging...: a file-scope
    import of any of them in a module imported at load and a stock Slicer cannot load SegVol at all."""
    outside = {
        f"{path.relative_to(MODULE_DIR)}: {name}"
        for path, tree in load_time_modules().items()
        for name in external_imports(tree, path)
        if name not in ALLOWED_AT_FILE_SCOPE
    }
    assert not outside, f"import these inside the function that uses them: {sorted(outside)}"


def test_no_code_runs_at_file_scope():
    """Importing the module only defines things: no install, no download, no file or Qt call at import."""
    ran = [
        f"{path.relative_to(MODULE_DIR)}:{call.lineno}: {dotted(call.func)}(...)"
        for path, tree in load_time_modules().items()
        for call in file_scope_calls(tree)
        if dotted(call.func) not in PURE_CALLS
    ]
    assert not ran, ran


def test_the_checks_catch_what_they_guard_against(tmp_path):
    """The ast checks see an import and a call hidden in the places Python runs at import."""
    source = textwrap.dedent("""
        import json
        try:
            import httpx
        except ImportError:
            pass
        class Panel:
            if True:
                size = subprocess.run(["pip"])
            def later(self, x=download()):
                import torch
                return run()
    """)
    tree = ast.parse(source)
    path = MODULE_DIR / PACKAGE / "probe.py"  # a name inside the package, never written
    assert external_imports(tree, path) == {"json", "httpx"}
    assert sorted(dotted(call.func) for call in file_scope_calls(tree)) == ["download", "subprocess.run"]


def test_the_module_imports_with_none_of_the_requirement_files_installed():
    """A run of the same: SegVolSlicer imported (after Slicer's application modules) with every package of the
    requirement files, and torch, unimportable; then no module outside Slicer's bundled set was loaded."""
    probe = textwrap.dedent(f"""
        import json, sys
        blocked = set(json.loads(sys.argv[1]))
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in blocked:
                    raise ImportError("not installed in this Slicer: " + name)
        sys.meta_path.insert(0, Block())
        sys.path.insert(0, {str(MODULE_DIR)!r})
        sys.path.insert(0, {str(MODULE_DIR / "Testing" / "Python")!r})
        import slicer_core_env  # Slicer's application modules
        before = set(sys.modules)
        import SegVolSlicer
        assert SegVolSlicer.SegVolSlicerWidget and SegVolSlicer.SegVolSlicerLogic and SegVolSlicer.SegVolSlicerTest
        print(json.dumps(sorted({{name.split(".")[0] for name in set(sys.modules) - before}})))
    """)
    blocked = requirement_import_names()
    result = subprocess.run(
        [sys.executable, "-c", probe, json.dumps(sorted(blocked))], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = set(json.loads(result.stdout.splitlines()[-1]))
    assert not loaded & set(blocked)
    assert loaded <= ALLOWED_AT_FILE_SCOPE | {"SegVolSlicer"}, sorted(loaded - ALLOWED_AT_FILE_SCOPE)
