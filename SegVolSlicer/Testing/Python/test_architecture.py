"""The house's structure rules, checked on the import graph (tools/import_graph.py, `ast` only) and the module map
(docs/architecture.md): no import cycle, no import running up the layers, faces never importing inference/ nor
another face's wing, no module using another's `_private` names, and every module on the map."""

import importlib.util
import os
import re
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def load_tool():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


import_graph = load_tool()


def test_the_project_breaks_no_rule_but_the_allowed_ones_and_each_allowed_one_still_happens():
    """Guards a new cycle, upward import, face reaching into inference/ or private name (fix it, never list
    it), and an allow-list that keeps entries already fixed (it only shrinks)."""
    found = import_graph.violations(import_graph.build_graph())
    assert [line for line in found if line not in import_graph.ALLOWED] == []
    assert sorted(set(import_graph.ALLOWED) - set(found)) == []


def test_the_command_exits_zero_on_the_project_and_prints_the_graph(capsys):
    assert import_graph.main(["--graph"]) == 0
    out = capsys.readouterr().out
    assert "engine [engine] -> " in out and "modules, " in out


# --- each rule catches its mistake, on a package made for it ---


def package(tmp_path, files: dict[str, str]) -> Path:
    """A module folder like SegVolSlicer/: SegVolSlicerLib/ with the given modules (paths relative to it)."""
    lib = tmp_path / "SegVolSlicerLib"
    for name, text in {"__init__.py": "", "inference/__init__.py": "", **files}.items():
        path = lib / name if name != "SegVolSlicer.py" else tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return tmp_path


def violations(tmp_path, files):
    return import_graph.violations(import_graph.build_graph(package(tmp_path, files)))


def test_a_cycle_closed_by_an_import_inside_a_function_is_found(tmp_path):
    found = violations(
        tmp_path,
        {
            "engine.py": "from .evaluation import dice\n",
            "evaluation.py": "def run():\n    from .engine import EngineHost\n",
        },
    )
    assert "cycle: engine -> evaluation" in found


def test_an_import_under_type_checking_does_not_count(tmp_path):
    found = violations(
        tmp_path,
        {
            "engine.py": "from .evaluation import dice\n",
            "evaluation.py": """
                from typing import TYPE_CHECKING
                if TYPE_CHECKING:
                    from .engine import EngineHost
            """,
        },
    )
    assert not any(line.startswith("cycle") for line in found)


def test_an_import_up_the_layers_is_found(tmp_path):
    found = violations(tmp_path, {"engine.py": "", "inference/session.py": "from .. import engine\n"})
    assert found == ["up: inference.session (inference) imports engine (engine)"]


@pytest.mark.parametrize(
    "face", ["cli/segment.py", "server/sessions.py", "client.py", "slicer/jobs.py", "SegVolSlicer.py"]
)
def test_a_face_importing_inference_is_found(tmp_path, face):
    statement = (
        "from SegVolSlicerLib.inference.session import SegVolSession\n"
        if face == "SegVolSlicer.py"
        else "from SegVolSlicerLib.inference import session\n"
    )
    found = violations(tmp_path, {"inference/session.py": "", face: statement})
    name = face.removesuffix(".py").replace("/", ".")
    assert f"face imports inference: {name} imports inference.session" in found


def test_a_face_importing_another_wing_is_found_but_the_remote_engine_is_shared(tmp_path):
    found = violations(
        tmp_path,
        {
            "client.py": "",
            "cli/__init__.py": "",
            "cli/progress.py": "",
            "slicer/jobs.py": "from ..cli.progress import Bars\nfrom ..client import RemoteEngine\n",
        },
    )
    assert found == ["imports another face: slicer.jobs imports cli.progress (cli wing)"]


def test_another_modules_private_name_is_found_however_it_is_reached(tmp_path):
    found = violations(
        tmp_path,
        {
            "reporting.py": "_KEPT = 1\n__all__ = []\n",
            "engine.py": "from .reporting import _KEPT, __all__\n",
            "runtime.py": "from . import reporting as r\nprint(r._KEPT)\n",
        },
    )
    assert sorted(found) == ["private: engine uses reporting._KEPT", "private: runtime uses reporting._KEPT"]


def test_a_module_in_no_layer_is_found(tmp_path):
    assert violations(tmp_path, {"gadgets.py": ""}) == [
        "unplaced: gadgets is in no layer of tools/import_graph.py's LAYERS"
    ]


# --- the module map ---


def test_docs_architecture_lists_every_module_and_no_module_that_does_not_exist():
    """Guards the map going stale: a module added without its line, or a line left for a module removed."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^- `([\w/]+\.py)`", text, flags=re.MULTILINE))
    folder = ROOT / "SegVolSlicer"
    modules = {"SegVolSlicer.py"} | {
        path.relative_to(folder / "SegVolSlicerLib").as_posix() for path in (folder / "SegVolSlicerLib").rglob("*.py")
    }
    assert sorted(modules - listed) == [], "modules missing from docs/architecture.md"
    assert sorted(listed - modules) == [], "docs/architecture.md lists modules that do not exist"


# The released CLIP tokenizer's files, kept as BAAI publishes them (their "name_or_path" is the authors' folder).
AS_RELEASED = ROOT / "SegVolSlicer" / "SegVolSlicerLib" / "data" / "clip-tokenizer"


def project_text_files():
    for folder, subfolders, files in os.walk(ROOT):
        # Not .git, virtual environments, caches, build trees.
        subfolders[:] = [
            name
            for name in subfolders
            if (not name.startswith(".") or name == ".ci") and name not in ("__pycache__", "build")
        ]
        for name in files:
            if name.startswith("."):
                continue  # .git (a worktree's pointer file), .gitignore, editor files
            path = Path(folder) / name
            if AS_RELEASED in path.parents or path.stat().st_size > 2**20:
                continue
            try:
                yield path, path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue  # images, volumes, weights


def test_no_file_names_an_absolute_path_outside_the_project():
    """Guards a path of one machine (a home folder, a worktree, a shared folder) left in code or docs."""
    pattern = re.compile(r"(?<![\w.~])/(?:work|home|Users|root|mnt|opt)/[\w.-]+")
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path, text in project_text_files()
        for number, line in enumerate(text.splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []
