"""Installing SegVol's Python packages inside Slicer: what counts as missing, and the ask (GUI thread) then
install (worker thread) flow, with Slicer's dialogs, PyTorchUtils and the installers replaced by recorders. The
rule: never install without asking, never open a dialog from auto-update, never install on the GUI thread,
never a traceback."""

import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import slicer
from packaging.requirements import Requirement
from packaging.version import Version
from slicer_core_env import slicer_scene  # noqa: F401  (fixture)

from SegVolSlicerLib.slicer import dependencies

MODULE_DIR = Path(__file__).resolve().parents[2]
REQUIREMENTS_FILE = MODULE_DIR / "Resources" / "requirements.txt"
CLIENT_REQUIREMENTS_FILE = MODULE_DIR / "Resources" / "requirements-client.txt"
NUMPY = importlib.metadata.version("numpy")


def test_unsatisfied_requirements(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"# comment\nnumpy=={NUMPY}\nnumpy<1.0\nno-such-package-segvol==1.0  # absent\n")
    lines = dependencies.requirement_lines(requirements)
    assert lines == [f"numpy=={NUMPY}", "numpy<1.0", "no-such-package-segvol==1.0"]
    assert dependencies.unsatisfied(lines) == ["numpy<1.0", "no-such-package-segvol==1.0"]


def test_shipped_requirements_are_ranges_that_fit_pyproject():
    """`==` pins clash with any other extension that needs a neighbouring version: each requirement is a range
    from the tested version up to (at most) the next major release, within pyproject.toml's range."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    pyproject = tomllib.loads((MODULE_DIR.parent / "pyproject.toml").read_text())
    declared = {Requirement(line).name.lower(): Requirement(line) for line in pyproject["project"]["dependencies"]}
    ranges = [Requirement(line) for line in dependencies.requirement_lines(REQUIREMENTS_FILE)]
    assert {r.name.lower() for r in ranges} == set(declared) - {"torch", "numpy", "simpleitk"}
    for requirement in ranges:
        bounds = {spec.operator: Version(spec.version) for spec in requirement.specifier}
        assert set(bounds) == {">=", "<"}, requirement
        tested, below = bounds[">="], bounds["<"]
        assert tested < below <= Version(f"{tested.major + 1}"), requirement
        assert declared[requirement.name.lower()].specifier.contains(str(tested)), requirement
    assert Requirement(dependencies.TORCH_REQUIREMENT).specifier == declared["torch"].specifier


def test_slicer_constraints_hold_slicers_numpy():
    """.ci/check-slicer-requirements resolves the requirements against these: each names Slicer's numpy."""
    for name in ("slicer-5.10.txt", "slicer-5.12.txt"):
        lines = (MODULE_DIR.parent / ".ci" / "slicer-constraints" / name).read_text().splitlines()
        assert any(line.startswith("numpy==") for line in lines), name


def test_constraints_protect_slicers_packages(tmp_path):
    lines = Path(dependencies.protected_package_constraints(tmp_path)).read_text().splitlines()
    assert f"numpy=={NUMPY}" in lines
    assert f"torch=={importlib.metadata.version('torch')}" in lines


FIND_SPEC = importlib.util.find_spec


def _without_pytorch_extension(name, *args):
    return None if name == "PyTorchUtils" else FIND_SPEC(name, *args)


def _with_pytorch_extension(find_spec):
    """importlib.util.find_spec as in a Slicer with the PyTorch extension (PyTorchUtils importable)."""
    return lambda name, *args: object() if name == "PyTorchUtils" else find_spec(name, *args)


class FakeSlicer:
    """Records Slicer's dialogs, PyTorchUtils' check and the installers; `answers` are the user's replies."""

    def __init__(self, monkeypatch, tmp_path, torch_installed=True, answers=()):
        self.dialogs, self.commands = [], []
        self.answers = list(answers)
        monkeypatch.setattr(slicer.app, "temporaryPath", str(tmp_path), raising=False)
        for name in ("errorDisplay", "infoDisplay"):
            monkeypatch.setattr(slicer.util, name, lambda text, name=name, **kwargs: self.dialogs.append((name, text)))
        monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", self._confirm)
        monkeypatch.setattr(
            dependencies, "run_python_module", lambda module, args: self.commands.append([module, *args])
        )

        monkeypatch.setattr(dependencies, "torch_installed", lambda: torch_installed)
        monkeypatch.setattr(importlib.util, "find_spec", _with_pytorch_extension(importlib.util.find_spec))

    def _confirm(self, text, **kwargs):
        self.dialogs.append(("confirm", kwargs.get("detailedText", text)))
        return self.answers.pop(0)


def requirements_file(tmp_path, *lines):
    path = tmp_path / "requirements.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_without_the_pytorch_extension(slicer_scene, monkeypatch, tmp_path):  # noqa: F811
    fake = FakeSlicer(monkeypatch, tmp_path)
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name == "PyTorchUtils" else FIND_SPEC(name, *args)
    )
    assert dependencies.check(REQUIREMENTS_FILE, interactive=False) == dependencies.NEEDS_PYTORCH_EXTENSION
    assert fake.dialogs == []  # auto-update never opens a dialog
    assert dependencies.check(REQUIREMENTS_FILE) == dependencies.NEEDS_PYTORCH_EXTENSION
    assert fake.dialogs == [("errorDisplay", dependencies.NEEDS_PYTORCH_EXTENSION)]


def test_torch_is_installed_after_asking_with_light_the_torch(slicer_scene, monkeypatch, tmp_path):  # noqa: F811
    fake = FakeSlicer(monkeypatch, tmp_path, torch_installed=False, answers=[False, True])
    requirements = requirements_file(tmp_path, f"numpy=={NUMPY}")
    assert dependencies.check(requirements, interactive=False) == dependencies.PRESS_SEGMENT
    assert dependencies.check(requirements) == dependencies.DECLINED and fake.commands == []
    plan = dependencies.check(requirements)
    assert "torch>=2.2" in fake.dialogs[-1][1] and "several GB" in plan.message()
    assert fake.commands == []  # nothing is installed on the GUI thread: the plan runs on the worker
    assert plan.run() is None
    assert fake.commands == [
        ["pip", "install", "light-the-torch>=0.7"],
        ["light_the_torch", "install", dependencies.TORCH_REQUIREMENT],
    ]


def test_too_old_torch_is_named(slicer_scene, monkeypatch, tmp_path):  # noqa: F811
    fake = FakeSlicer(monkeypatch, tmp_path)
    monkeypatch.setattr(dependencies, "TORCH_REQUIREMENT", "torch>=99")
    message = dependencies.check(REQUIREMENTS_FILE)
    assert "torch>=99" in message and "PyTorch Utils" in message and fake.commands == []


def test_nothing_to_install(slicer_scene, monkeypatch, tmp_path):  # noqa: F811
    fake = FakeSlicer(monkeypatch, tmp_path)
    assert dependencies.check(requirements_file(tmp_path, f"numpy=={NUMPY}")) is None
    assert fake.dialogs == [] and fake.commands == []


def test_packages_are_installed_after_asking_with_constraints(slicer_scene, monkeypatch, tmp_path):  # noqa: F811
    requirements = requirements_file(tmp_path, f"numpy=={NUMPY}", "no-such-package-segvol==1.0")
    fake = FakeSlicer(monkeypatch, tmp_path, answers=[True])
    assert dependencies.check(requirements, interactive=False) == dependencies.PRESS_SEGMENT
    assert fake.dialogs == []
    plan = dependencies.check(requirements)
    assert [kind for kind, _ in fake.dialogs] == ["confirm"]
    with pytest.raises(dependencies.InstallFailed):  # pip "succeeded" yet the package is still missing
        plan.run()
    ((module, command, flag, path, constraint_flag, constraints),) = fake.commands
    assert (module, command, flag, path, constraint_flag) == ("pip", "install", "-r", str(requirements), "-c")
    assert f"numpy=={NUMPY}" in Path(constraints).read_text().splitlines()


def test_restart_notice_when_a_loaded_package_is_updated(slicer_scene, monkeypatch, tmp_path):  # noqa: F811
    FakeSlicer(monkeypatch, tmp_path, answers=[True])
    plan = dependencies.check(requirements_file(tmp_path, "numpy<1.0"))
    monkeypatch.setattr(dependencies, "unsatisfied", lambda lines: [])  # as after pip updated numpy
    message = plan.run()
    assert message.startswith("Restart Slicer") and "numpy" in message


def test_a_failing_installer_is_one_message(monkeypatch):
    """pip's exit status, or no pip at all, becomes InstallFailed with what to do; its output goes to the log."""
    monkeypatch.setattr(dependencies.shutil, "which", lambda name: None)
    with pytest.raises(dependencies.InstallFailed, match="check the network connection"):
        dependencies.run_python_module("pip", ["--no-such-option-segvol"])


def test_on_a_server_only_the_clients_packages_are_needed(slicer_scene, monkeypatch, tmp_path):  # noqa: F811
    """Slicer on a laptop with a SegVol server: no PyTorch extension, no torch, only httpx and blosc2."""
    fake = FakeSlicer(monkeypatch, tmp_path, torch_installed=False, answers=[True])
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name == "PyTorchUtils" else FIND_SPEC(name, *args)
    )
    client = requirements_file(tmp_path, f"numpy=={NUMPY}", "no-such-client-package-segvol==1.0")
    plan = dependencies.check(client, interactive=True, needs_torch=False)
    assert plan.torch_version is None and ("errorDisplay", dependencies.NEEDS_PYTORCH_EXTENSION) not in fake.dialogs
    with pytest.raises(dependencies.InstallFailed):
        plan.run()
    assert fake.commands[0][:4] == ["pip", "install", "-r", str(client)]


def test_the_client_requirements_name_no_torch():
    client = dependencies.requirement_lines(CLIENT_REQUIREMENTS_FILE)
    assert {Requirement(line).name.lower() for line in client} == {"httpx", "blosc2"}, client
    import SegVolSlicerLib.client  # noqa: F401  (what they serve: the client imports with them)


def test_checking_for_torch_does_not_import_it():
    """`check` runs on Slicer's GUI thread at the first Segment: PyTorchUtilsLogic.torchInstalled() imports
    torch there (seconds, Slicer frozen). The model's thread imports it, later."""
    probe = f"""
import sys, types
logic = types.SimpleNamespace(torchInstalled=lambda: __import__("torch") is not None)  # as PyTorch Utils
sys.modules["PyTorchUtils"] = types.SimpleNamespace(PyTorchUtilsLogic=logic)
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
import slicer_core_env
from SegVolSlicerLib.slicer import dependencies
dependencies.check({str(REQUIREMENTS_FILE)!r}, interactive=False)
assert "torch" not in sys.modules, "torch was imported on the GUI thread"
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
