"""Installing SegVol's Python packages inside Slicer: what counts as missing, and the ask (GUI thread) then
resolve and install (worker thread) flow, with Slicer's dialogs, PyTorchUtils and the installers replaced by
recorders. The rule: never install without asking, never open a dialog from auto-update, never install on the
GUI thread, never a traceback, never change a package that is already there (every installed distribution is
pinned), and a requirement that cannot fit beside them is one message before anything is installed.
(The real pip runs of the same code, in a venv holding what Slicer bundles: .ci/slicer-twin.)"""

import importlib.metadata
import json
import subprocess
import sys
import types
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


def test_constraints_pin_every_installed_distribution(tmp_path):
    """Not a list of Slicer's packages: whatever this Python has (Slicer's, another extension's) stays."""
    lines = Path(dependencies.write_constraints(tmp_path / "c.txt")).read_text().splitlines()
    assert f"numpy=={NUMPY}" in lines and f"torch=={importlib.metadata.version('torch')}" in lines
    everything = {d.metadata["Name"].lower().replace("_", "-") for d in importlib.metadata.distributions()}
    pinned = {line.split("==")[0].lower().replace("_", "-") for line in lines}
    assert pinned == everything and all(line.count("==") == 1 for line in lines)


def test_the_constraints_are_read_when_the_install_runs(slicer_scene, monkeypatch, tmp_path):  # noqa: F811
    """A package installed between the question and the install (another extension's) is pinned too."""
    fake = FakeSlicer(monkeypatch, tmp_path, answers=[True])
    plan = dependencies.check(requirements_file(tmp_path, "no-such-package-segvol==1.0"))
    fake.installed["late-package-segvol"] = ("late-package-segvol", "1.2")
    with pytest.raises(dependencies.InstallFailed):
        plan.run()
    assert "late-package-segvol==1.2" in fake.constraints_seen[0]


class FakeSlicer:
    """Records Slicer's dialogs, PyTorchUtils' check and the installers; `answers` are the user's replies.
    pip's dry run reports `resolves` (names it would install), or fails with `pip_error` (pip's output)."""

    def __init__(self, monkeypatch, tmp_path, torch_installed=True, answers=(), resolves=(), pip_error=None):
        self.dialogs, self.commands, self.constraints_seen = [], [], []
        self.answers, self.resolves, self.pip_error = list(answers), list(resolves), pip_error
        self.installed = dict(dependencies.installed_distributions())
        monkeypatch.setattr(dependencies, "installed_distributions", lambda: dict(self.installed))
        monkeypatch.setattr(slicer.app, "temporaryPath", str(tmp_path), raising=False)
        for name in ("errorDisplay", "infoDisplay"):
            monkeypatch.setattr(slicer.util, name, lambda text, name=name, **kwargs: self.dialogs.append((name, text)))
        monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", self._confirm)
        monkeypatch.setattr(dependencies, "run_python_module", self._run)
        monkeypatch.setattr(dependencies, "light_the_torch_installed", lambda: False)

        class PyTorchUtilsLogic:
            @staticmethod
            def torchInstalled():
                return torch_installed

        monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
        monkeypatch.setattr(dependencies, "torch_installed", lambda: torch_installed)  # not from the venv's torch

    def _run(self, module, args):
        self.commands.append([module, *args])
        if "-c" in args:
            self.constraints_seen.append(Path(args[args.index("-c") + 1]).read_text().splitlines())
        if "--dry-run" in args:
            if self.pip_error is not None:
                raise dependencies.InstallFailed(dependencies.FAILED, self.pip_error)
            report = [{"metadata": {"name": name, "version": "1"}} for name in self.resolves]
            Path(args[args.index("--report") + 1]).write_text(json.dumps({"install": report}))
        return ""

    def _confirm(self, text, **kwargs):
        self.dialogs.append(("confirm", kwargs.get("detailedText", text)))
        return self.answers.pop(0)


def requirements_file(tmp_path, *lines):
    path = tmp_path / "requirements.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_without_the_pytorch_extension(slicer_scene, monkeypatch, tmp_path):  # noqa: F811
    fake = FakeSlicer(monkeypatch, tmp_path)
    monkeypatch.delitem(sys.modules, "PyTorchUtils")
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
    (light_the_torch, (module, install, torch, flag, constraints)) = fake.commands
    assert light_the_torch == ["pip", "install", "light-the-torch>=0.7"]
    assert (module, install, torch, flag) == ("light_the_torch", "install", dependencies.TORCH_REQUIREMENT, "-c")
    assert f"numpy=={NUMPY}" in fake.constraints_seen[0]  # light-the-torch may not replace Slicer's numpy


def test_too_old_torch_is_named(slicer_scene, monkeypatch, tmp_path):  # noqa: F811
    fake = FakeSlicer(monkeypatch, tmp_path)
    monkeypatch.setattr(dependencies, "TORCH_REQUIREMENT", "torch>=99")
    message = dependencies.check(REQUIREMENTS_FILE)
    assert "torch>=99" in message and "PyTorch Utils" in message and fake.commands == []


def test_nothing_to_install(slicer_scene, monkeypatch, tmp_path):  # noqa: F811
    fake = FakeSlicer(monkeypatch, tmp_path)
    assert dependencies.check(requirements_file(tmp_path, f"numpy=={NUMPY}")) is None
    assert fake.dialogs == [] and fake.commands == []


def test_packages_are_resolved_then_installed_after_asking_with_constraints(
    slicer_scene,  # noqa: F811
    monkeypatch,
    tmp_path,
):
    requirements = requirements_file(tmp_path, f"numpy=={NUMPY}", "no-such-package-segvol==1.0")
    fake = FakeSlicer(monkeypatch, tmp_path, answers=[True], resolves=["no-such-package-segvol"])
    assert dependencies.check(requirements, interactive=False) == dependencies.PRESS_SEGMENT
    assert fake.dialogs == []
    plan = dependencies.check(requirements)
    assert [kind for kind, _ in fake.dialogs] == ["confirm"]
    with pytest.raises(dependencies.InstallFailed):  # pip "succeeded" yet the package is still missing
        plan.run()
    dry_run, install = fake.commands
    assert install == ["pip", "install", "-r", str(requirements), "-c", plan.constraints]
    assert dry_run[: len(install)] == install and dry_run[len(install) : len(install) + 2] == ["--dry-run", "--report"]
    assert all(f"numpy=={NUMPY}" in seen for seen in fake.constraints_seen)


def test_a_requirement_that_would_replace_an_installed_package_is_refused_before_asking(
    slicer_scene,  # noqa: F811
    monkeypatch,
    tmp_path,
):
    """numpy is there at another version: no question, no download, one message naming both versions."""
    fake = FakeSlicer(monkeypatch, tmp_path, answers=[True])
    requirements = requirements_file(tmp_path, "numpy<1.0", "no-such-package-segvol==1.0")
    message = dependencies.check(requirements, interactive=False)
    assert f"numpy<1.0 (this Slicer has numpy {NUMPY})" in message and "Nothing was installed" in message
    assert fake.dialogs == [] and fake.commands == []
    assert dependencies.check(requirements) == message and fake.dialogs == [("errorDisplay", message)]


def test_dicom_seg_on_a_slicer_with_pydicom_2_says_what_to_use_instead(slicer_scene, monkeypatch, tmp_path):  # noqa: F811
    """Slicer 5.10 bundles pydicom 2.4.4: no highdicom that works with numpy 2 fits (0.23+ needs pydicom 3)."""
    fake = FakeSlicer(monkeypatch, tmp_path, answers=[True])
    fake.installed["pydicom"] = ("pydicom", "2.4.4")
    dicom = MODULE_DIR / "Resources" / "requirements-dicom.txt"
    message = dependencies.check(dicom, needs_torch=False)
    assert message.startswith("Export DICOM SEG needs Slicer 5.12") and "QuantitativeReporting" in message
    assert "this Slicer has pydicom 2.4.4" in message and fake.commands == []
    assert [kind for kind, _ in fake.dialogs] == ["errorDisplay"]


PIP_CONFLICT = """Collecting highdicom<1,>=0.23
ERROR: Cannot install highdicom because these package versions have conflicting dependencies.

The conflict is caused by:
    highdicom 0.27.0 depends on pydicom>=3.0.1
    The user requested (constraint) pydicom==2.4.4

To fix this you could try to:
1. loosen the range of package versions you've specified
ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/dependency-resolution/
"""


def test_a_conflict_only_pip_sees_installs_nothing(slicer_scene, monkeypatch, tmp_path):  # noqa: F811
    """A dependency deep down needs another version of an installed package: pip's dry run says so before
    light-the-torch or pip install anything, and the message carries pip's reason."""
    fake = FakeSlicer(monkeypatch, tmp_path, torch_installed=False, answers=[True], pip_error=PIP_CONFLICT)
    plan = dependencies.check(requirements_file(tmp_path, "no-such-package-segvol==1.0"))
    with pytest.raises(dependencies.DoesNotFit) as raised:
        plan.run()
    assert "highdicom 0.27.0 depends on pydicom>=3.0.1; The user requested (constraint) pydicom==2.4.4" in str(
        raised.value
    )
    ((module, *arguments),) = fake.commands  # the dry run only
    assert (
        "--dry-run" in arguments and dependencies.TORCH_REQUIREMENT in arguments
    )  # resolved together with the torch to come


def test_a_dry_run_that_fails_otherwise_is_the_network_message(slicer_scene, monkeypatch, tmp_path):  # noqa: F811
    error = "ERROR: Could not install packages due to an OSError: HTTPSConnectionPool: Max retries exceeded\n"
    fake = FakeSlicer(monkeypatch, tmp_path, answers=[True], pip_error=error)
    plan = dependencies.check(requirements_file(tmp_path, "no-such-package-segvol==1.0"))
    with pytest.raises(dependencies.InstallFailed) as raised:
        plan.run()
    assert not isinstance(raised.value, dependencies.DoesNotFit) and str(raised.value) == dependencies.FAILED
    assert len(fake.commands) == 1


def test_restart_notice_when_a_loaded_package_is_installed(slicer_scene, monkeypatch, tmp_path):  # noqa: F811
    """A module already imported (from a folder without package metadata) that pip installs: Python keeps the
    old one until Slicer restarts."""
    FakeSlicer(monkeypatch, tmp_path, answers=[True], resolves=["segvol-loaded-probe"])
    monkeypatch.setitem(sys.modules, "segvol_loaded_probe", types.ModuleType("segvol_loaded_probe"))
    plan = dependencies.check(requirements_file(tmp_path, "segvol-loaded-probe==1.0"))
    monkeypatch.setattr(dependencies, "unsatisfied", lambda lines: [])  # as after pip installed it
    message = plan.run()
    assert message.startswith("Restart Slicer") and "segvol-loaded-probe" in message


def test_a_failing_installer_is_one_message(monkeypatch):
    """pip's exit status, or no pip at all, becomes InstallFailed with what to do; its output goes to the log."""
    monkeypatch.setattr(dependencies.shutil, "which", lambda name: None)
    with pytest.raises(dependencies.InstallFailed, match="check the network connection"):
        dependencies.run_python_module("pip", ["--no-such-option-segvol"])


def test_on_a_server_only_the_clients_packages_are_needed(slicer_scene, monkeypatch, tmp_path):  # noqa: F811
    """Slicer on a laptop with a SegVol server: no PyTorch extension, no torch, only httpx and blosc2."""
    fake = FakeSlicer(monkeypatch, tmp_path, torch_installed=False, answers=[True])
    monkeypatch.delitem(sys.modules, "PyTorchUtils")
    client = requirements_file(tmp_path, f"numpy=={NUMPY}", "no-such-client-package-segvol==1.0")
    plan = dependencies.check(client, interactive=True, needs_torch=False)
    assert plan.torch_version is None and ("errorDisplay", dependencies.NEEDS_PYTORCH_EXTENSION) not in fake.dialogs
    with pytest.raises(dependencies.InstallFailed):
        plan.run()
    assert (
        fake.commands[0][:4] == ["pip", "install", "-r", str(client)]
        and dependencies.TORCH_REQUIREMENT not in fake.commands[0]
    )


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
