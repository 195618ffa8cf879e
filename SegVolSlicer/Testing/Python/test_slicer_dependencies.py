"""Installing SegVol's Python packages inside Slicer: what counts as missing, and the ask-then-install flow on
Slicer 5.10 (pip) and 5.12+ (slicer.packaging), with Slicer's dialogs, PyTorchUtils and pip replaced by
recorders. The rule: never install without asking, never open a dialog from auto-update, never a traceback."""

import contextlib
import importlib.metadata
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


def test_constraints_protect_slicers_packages(tmp_path):
    lines = Path(dependencies.protected_package_constraints(tmp_path)).read_text().splitlines()
    assert f"numpy=={NUMPY}" in lines
    assert f"torch=={importlib.metadata.version('torch')}" in lines


class FakeSlicer:
    """Records Slicer's dialogs, PyTorchUtils and pip; `answers` are the user's replies to confirmations."""

    def __init__(self, monkeypatch, tmp_path, torch_installed=True, answers=(), pip_error=None, packaging_outcome=None):
        self.dialogs, self.pip_calls, self.torch_installs, self.ensure_calls = [], [], [], []
        self.answers = list(answers)
        monkeypatch.setattr(slicer.app, "temporaryPath", str(tmp_path), raising=False)
        for name in ("errorDisplay", "infoDisplay"):
            monkeypatch.setattr(slicer.util, name, self._recorder(name))
        monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", self._confirm)
        monkeypatch.setattr(slicer.util, "WaitCursor", contextlib.nullcontext)
        monkeypatch.setattr(slicer.util, "pip_install", self._pip(pip_error))
        fake = self

        class PyTorchUtilsLogic:
            @staticmethod
            def torchInstalled():
                return torch_installed

            def installTorch(self, askConfirmation=False, torchVersionRequirement=None):
                fake.torch_installs.append((askConfirmation, torchVersionRequirement))
                return None  # the user declined

        monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
        if packaging_outcome is not None:

            def pip_ensure(requirements, constraints=None, requester=None):
                self.ensure_calls.append((requirements, constraints, requester))
                if isinstance(packaging_outcome, BaseException):
                    raise packaging_outcome

            packaging = types.SimpleNamespace(pip_ensure=pip_ensure, load_requirements=dependencies.requirement_lines)
            monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)

    def _recorder(self, name):
        return lambda text, **kwargs: self.dialogs.append((name, text))

    def _confirm(self, text, **kwargs):
        self.dialogs.append(("confirm", text))
        return self.answers.pop(0)

    def _pip(self, error):
        def pip_install(arguments):
            self.pip_calls.append(arguments)
            if error is not None:
                raise error

        return pip_install


def requirements_file(tmp_path, *lines):
    path = tmp_path / "requirements.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_without_the_pytorch_extension(slicer_scene, monkeypatch, tmp_path):  # noqa: F811
    fake = FakeSlicer(monkeypatch, tmp_path)
    monkeypatch.delitem(sys.modules, "PyTorchUtils")
    assert dependencies.ensure(REQUIREMENTS_FILE, interactive=False) == dependencies.NEEDS_PYTORCH_EXTENSION
    assert fake.dialogs == []  # auto-update never opens a dialog
    assert dependencies.ensure(REQUIREMENTS_FILE) == dependencies.NEEDS_PYTORCH_EXTENSION
    assert fake.dialogs == [("errorDisplay", dependencies.NEEDS_PYTORCH_EXTENSION)]


def test_torch_is_installed_through_pytorchutils_after_asking(slicer_scene, monkeypatch, tmp_path):  # noqa: F811
    fake = FakeSlicer(monkeypatch, tmp_path, torch_installed=False)
    assert dependencies.ensure(REQUIREMENTS_FILE, interactive=False) == dependencies.PRESS_SEGMENT
    assert fake.torch_installs == []
    assert dependencies.ensure(REQUIREMENTS_FILE) == dependencies.DECLINED
    assert fake.torch_installs == [(True, ">=2.2")] and fake.pip_calls == []


def test_too_old_torch_is_named(slicer_scene, monkeypatch, tmp_path):  # noqa: F811
    fake = FakeSlicer(monkeypatch, tmp_path)
    monkeypatch.setattr(dependencies, "TORCH_REQUIREMENT", "torch>=99")
    message = dependencies.ensure(REQUIREMENTS_FILE)
    assert "torch>=99" in message and "PyTorch Utils" in message and fake.pip_calls == []


def test_nothing_to_install(slicer_scene, monkeypatch, tmp_path):  # noqa: F811
    fake = FakeSlicer(monkeypatch, tmp_path)
    assert dependencies.ensure(requirements_file(tmp_path, f"numpy=={NUMPY}")) is None
    assert fake.dialogs == [] and fake.pip_calls == []


def test_slicer_5_10_asks_then_installs_with_constraints(slicer_scene, monkeypatch, tmp_path):  # noqa: F811
    requirements = requirements_file(tmp_path, f"numpy=={NUMPY}", "no-such-package-segvol==1.0")
    fake = FakeSlicer(monkeypatch, tmp_path, answers=[False, True])
    assert dependencies.ensure(requirements, interactive=False) == dependencies.PRESS_SEGMENT
    assert fake.dialogs == []
    assert dependencies.ensure(requirements) == dependencies.DECLINED
    assert [kind for kind, _ in fake.dialogs] == ["confirm"] and fake.pip_calls == []
    assert dependencies.ensure(requirements) is None
    ((flag, path, constraint_flag, constraints),) = fake.pip_calls
    assert (flag, path, constraint_flag) == ("-r", str(requirements), "-c")
    assert f"numpy=={NUMPY}" in Path(constraints).read_text().splitlines()


def test_slicer_5_10_restart_notice_and_failure(slicer_scene, monkeypatch, tmp_path):  # noqa: F811
    fake = FakeSlicer(monkeypatch, tmp_path, answers=[True])
    message = dependencies.ensure(requirements_file(tmp_path, "numpy<1.0"))  # numpy is loaded: restart
    assert message.startswith("Restart Slicer") and "numpy" in message
    assert fake.dialogs[-1] == ("infoDisplay", message)
    fake = FakeSlicer(monkeypatch, tmp_path, answers=[True], pip_error=subprocess.CalledProcessError(1, "pip"))
    assert dependencies.ensure(requirements_file(tmp_path, "no-such-package-segvol==1.0")) == dependencies.FAILED
    assert fake.dialogs[-1] == ("errorDisplay", dependencies.FAILED)


@pytest.mark.parametrize(
    "outcome, message",
    [
        (RuntimeError("User declined package installation"), dependencies.DECLINED),
        (subprocess.CalledProcessError(1, "pip install"), dependencies.FAILED),
        (False, dependencies.FAILED),  # pip "succeeded" yet the package is still missing
    ],
)
def test_slicer_5_12_uses_pip_ensure(outcome, message, slicer_scene, monkeypatch, tmp_path):  # noqa: F811
    requirements = requirements_file(tmp_path, "no-such-package-segvol==1.0")
    fake = FakeSlicer(monkeypatch, tmp_path, packaging_outcome=outcome)
    assert dependencies.ensure(requirements) == message
    ((lines, constraints, requester),) = fake.ensure_calls
    assert lines == ["no-such-package-segvol==1.0"] and requester == "SegVol" and Path(constraints).is_file()
    assert fake.pip_calls == [] and fake.dialogs == []  # pip_ensure asks and reports itself


def test_on_a_server_only_the_clients_packages_are_needed(slicer_scene, monkeypatch, tmp_path):  # noqa: F811
    """Slicer on a laptop with a SegVol server: no PyTorch extension, no torch, only httpx and blosc2."""
    fake = FakeSlicer(monkeypatch, tmp_path, torch_installed=False, answers=[True])
    monkeypatch.delitem(sys.modules, "PyTorchUtils")
    client = requirements_file(tmp_path, f"numpy=={NUMPY}", "no-such-client-package-segvol==1.0")
    monkeypatch.delitem(sys.modules, "slicer.packaging", raising=False)
    dependencies.ensure(client, interactive=True, needs_torch=False)
    assert fake.torch_installs == [] and ("errorDisplay", dependencies.NEEDS_PYTORCH_EXTENSION) not in fake.dialogs
    assert fake.pip_calls and fake.pip_calls[0][:2] == ["-r", str(client)]


def test_the_client_requirements_name_no_torch():
    client = dependencies.requirement_lines(CLIENT_REQUIREMENTS_FILE)
    assert {Requirement(line).name.lower() for line in client} == {"httpx", "blosc2"}, client
    import SegVolSlicerLib.client  # noqa: F401  (what they serve: the client imports with them)
