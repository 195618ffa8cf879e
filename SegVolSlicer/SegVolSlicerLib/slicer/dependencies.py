"""SegVol's Python packages inside 3D Slicer: what is missing, and installing it after asking.

torch as the PyTorch extension installs it (light-the-torch picks the CUDA or CPU build for the computer); the
other packages from Resources/requirements.txt, with Slicer's own packages held at their installed versions.
`check` decides and asks on Slicer's main thread (dialogs); the `InstallPlan` it returns downloads and installs
on the panel's worker thread, so that Slicer never freezes for the minutes a PyTorch download takes.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass

import slicer
from packaging.requirements import Requirement

from ..errors import SegVolError

# As pyproject.toml: the oldest torch the engine runs on, without 2.9.0 (its conv3d memory regression).
TORCH_REQUIREMENT = "torch>=2.2,!=2.9.0"
# Slicer's own packages: installing SegVol's requirements must never replace them.
PROTECTED_PACKAGES = ("numpy", "SimpleITK", "torch", "requests")

NEEDS_PYTORCH_EXTENSION = (
    "SegVol needs the PyTorch extension: install 'PyTorch' from the Extensions Manager, restart Slicer and try again."
)
PRESS_SEGMENT = "SegVol's Python packages are not installed yet: press Segment to install them."
DECLINED = "SegVol's Python packages were not installed: SegVol cannot run without them."
FAILED = "Installing SegVol's Python packages failed (see the log); check the network connection and try again."
INSTALLING = (
    "Downloading and installing SegVol's Python packages ({size}): this can take minutes. Slicer stays usable; "
    "SegVol starts once they are installed."
)
RESTART = "Restart Slicer to use SegVol: packages that were already loaded have been updated ({names})."


def requirement_lines(requirements_file) -> list[str]:
    with open(requirements_file, encoding="utf-8") as file:
        return [line for line in (raw.split("#")[0].strip() for raw in file) if line]


def unsatisfied(lines) -> list[str]:
    """The requirement lines that the running Python does not satisfy."""
    missing = []
    for line in lines:
        requirement = Requirement(line)
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(line)
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            missing.append(line)
    return missing


def protected_package_constraints(folder) -> str:
    """A pip constraints file pinning Slicer's own packages at their installed versions; returns its path."""
    lines = []
    for name in PROTECTED_PACKAGES:
        try:
            lines.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    path = os.path.join(folder, "SegVolSlicer-constraints.txt")
    with open(path, "w", encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n")
    return path


def torch_installed() -> bool:
    """Whether torch is installed, from its metadata: not PyTorchUtilsLogic.torchInstalled(), which imports
    torch (seconds, and on Slicer's GUI thread, where `check` runs)."""
    return not unsatisfied(["torch"])


def check(requirements_file, interactive: bool = True, needs_torch: bool = True) -> str | InstallPlan | None:
    """GUI thread, no network: None when SegVol's packages are ready; an InstallPlan the user agreed to (run it
    on a worker thread); otherwise one line saying why not (for the status label).

    Interactive (the user pressed Segment): asks before any download. Not interactive (auto-update): installs
    nothing and opens no dialog. Without torch (SegVol runs on a server): only the client's packages, no PyTorch
    extension.
    """
    torch_version = None
    if needs_torch:
        if "PyTorchUtils" not in sys.modules and importlib.util.find_spec("PyTorchUtils") is None:
            if interactive:
                slicer.util.errorDisplay(NEEDS_PYTORCH_EXTENSION)
            return NEEDS_PYTORCH_EXTENSION
        if not torch_installed():
            torch_version = TORCH_REQUIREMENT.removeprefix("torch")
        elif unsatisfied([TORCH_REQUIREMENT]):
            found = importlib.metadata.version("torch")
            return (
                f"SegVol needs {TORCH_REQUIREMENT} but Slicer has torch {found}: update it in the PyTorch Utils "
                "module (Uninstall, restart Slicer, Install) and try again."
            )
    missing = unsatisfied(requirement_lines(requirements_file))
    if torch_version is None and not missing:
        return None
    if not interactive:
        return PRESS_SEGMENT
    what = ["torch" + torch_version + " (PyTorch, about 2 GB with CUDA)"] if torch_version else []
    if not slicer.util.confirmOkCancelDisplay(
        "SegVol needs these Python packages. Download and install them now (needs a network connection; "
        "Slicer stays usable meanwhile)?",
        detailedText="\n".join(what + missing),
    ):
        return DECLINED
    constraints = protected_package_constraints(slicer.app.temporaryPath)
    return InstallPlan(torch_version, str(requirements_file), missing, constraints)


_INSTALL_LOCK = threading.Lock()


class InstallFailed(SegVolError):
    """pip or light-the-torch failed; the message says what to do, the log has pip's output."""


@dataclass(frozen=True)
class InstallPlan:
    """What to install, agreed to by the user; `run` works on any thread (no Qt, no MRML)."""

    torch_version: str | None  # e.g. ">=2.2"; None: torch is there
    requirements_file: str
    missing: list
    constraints: str

    def message(self) -> str:
        size = "several GB" if self.torch_version else "a few hundred MB"
        return INSTALLING.format(size=size)

    def run(self) -> str | None:
        """Install; returns a restart notice when a loaded package was updated. Raises InstallFailed. One
        install at a time: one left running by a closed scene finishes before the next starts."""
        with _INSTALL_LOCK:
            return self._install()

    def _install(self) -> str | None:
        if self.torch_version is not None:
            install_torch(self.torch_version)
            # pip must keep the torch build light-the-torch chose (CUDA or CPU): pin it with Slicer's packages
            protected_package_constraints(os.path.dirname(self.constraints))
        if not self.missing:
            return None
        loaded = [
            n for n in (Requirement(line).name for line in self.missing) if n.lower().replace("-", "_") in sys.modules
        ]
        run_python_module("pip", ["install", "-r", self.requirements_file, "-c", self.constraints])
        if unsatisfied(self.missing):
            raise InstallFailed(FAILED)
        return RESTART.format(names=", ".join(loaded)) if loaded else None


def install_torch(version: str) -> None:
    """torch as the PyTorch extension installs it (light-the-torch picks the CUDA or CPU build for this
    computer), but in a subprocess whose output goes to the log: PyTorchUtils' own installTorch handles Qt
    events while pip runs, which only the GUI thread may do."""
    run_python_module("pip", ["install", "light-the-torch>=0.7"])
    run_python_module("light_the_torch", ["install", f"torch{version}"])


def run_python_module(module: str, arguments: list) -> None:
    """`PythonSlicer -m module arguments` (any thread); its output goes to the log. Raises InstallFailed."""
    python = shutil.which("PythonSlicer") or sys.executable
    try:
        completed = subprocess.run(
            [python, "-m", module, *arguments], capture_output=True, text=True, encoding="utf-8", errors="replace"
        )
    except OSError as error:
        raise InstallFailed(f"{FAILED} ({error})") from None
    for line in (completed.stdout + completed.stderr).splitlines():
        logging.info(line)
    if completed.returncode != 0:
        raise InstallFailed(FAILED)
