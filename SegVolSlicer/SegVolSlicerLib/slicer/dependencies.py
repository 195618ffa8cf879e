"""SegVol's Python packages inside 3D Slicer: what is missing, and installing it after asking.

torch comes from the PyTorch extension (its PyTorchUtils picks the CUDA or CPU build for the computer); the
other packages from the pinned Resources/requirements.txt, with Slicer's own packages held at their installed
versions. Runs on Slicer's main thread (dialogs); importable anywhere, so that pytest covers the decisions.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import subprocess
import sys

import slicer
from packaging.requirements import Requirement

# As pyproject.toml: the oldest torch the engine runs on.
TORCH_REQUIREMENT = "torch>=2.2"
# Slicer's own packages: installing SegVol's requirements must never replace them.
PROTECTED_PACKAGES = ("numpy", "SimpleITK", "torch", "requests")

NEEDS_PYTORCH_EXTENSION = (
    "SegVol needs the PyTorch extension: install 'PyTorch' from the Extensions Manager, restart Slicer and try again."
)
PRESS_SEGMENT = "SegVol's Python packages are not installed yet: press Segment to install them."
DECLINED = "SegVol's Python packages were not installed: SegVol cannot run without them."
FAILED = "Installing SegVol's Python packages failed (see the log); check the network connection and try again."
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


def ensure(requirements_file, interactive: bool = True, needs_torch: bool = True) -> str | None:
    """None when SegVol's packages are ready; otherwise one line saying why not (for the status label).

    Interactive (the user pressed Segment): asks, installs what is missing, shows failures in a dialog.
    Not interactive (auto-update): installs nothing and opens no dialog. Without torch (SegVol runs on a server):
    only the client's packages, no PyTorch extension.
    """
    problem = _ensure_torch(interactive) if needs_torch else None
    if problem is not None:
        return problem
    missing = unsatisfied(requirement_lines(requirements_file))
    if not missing:
        return None
    if not interactive:
        return PRESS_SEGMENT
    constraints = protected_package_constraints(slicer.app.temporaryPath)
    try:
        packaging = importlib.import_module("slicer.packaging")  # Slicer 5.12 and later
    except ImportError:
        return _pip_install(requirements_file, missing, constraints)
    try:
        # Asks, shows pip's log (and a dialog if pip fails), offers a restart if a loaded package was updated.
        packaging.pip_ensure(
            packaging.load_requirements(requirements_file), constraints=constraints, requester="SegVol"
        )
    except RuntimeError:  # the user declined
        return DECLINED
    except subprocess.CalledProcessError:
        return FAILED
    return None if not unsatisfied(missing) else FAILED


def _ensure_torch(interactive: bool) -> str | None:
    """torch through the PyTorch extension (after asking), at TORCH_REQUIREMENT or later."""
    try:
        import PyTorchUtils
    except ModuleNotFoundError:
        if interactive:
            slicer.util.errorDisplay(NEEDS_PYTORCH_EXTENSION)
        return NEEDS_PYTORCH_EXTENSION
    if not PyTorchUtils.PyTorchUtilsLogic.torchInstalled():
        if not interactive:
            return PRESS_SEGMENT
        version = TORCH_REQUIREMENT.removeprefix("torch")
        # PyTorchUtils asks first; torch was not imported yet, so no restart is needed.
        if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True, torchVersionRequirement=version) is None:
            return DECLINED
    if unsatisfied([TORCH_REQUIREMENT]):
        found = importlib.metadata.version("torch")
        return (
            f"SegVol needs {TORCH_REQUIREMENT} but Slicer has torch {found}: update it in the PyTorch Utils "
            "module (Uninstall, restart Slicer, Install) and try again."
        )
    return None


def _pip_install(requirements_file, missing, constraints) -> str | None:
    """Slicer 5.10, before slicer.packaging: ask, install with pip, tell when a restart is needed."""
    if not slicer.util.confirmOkCancelDisplay(
        "SegVol needs these Python packages. Install them now (needs a network connection)?",
        detailedText="\n".join(missing),
    ):
        return DECLINED
    names = (Requirement(line).name for line in missing)
    loaded = [name for name in names if name.lower().replace("-", "_") in sys.modules]
    try:
        with slicer.util.WaitCursor():
            slicer.util.pip_install(["-r", str(requirements_file), "-c", constraints])
    except subprocess.CalledProcessError as error:
        logging.error(f"pip failed: {error}")
        slicer.util.errorDisplay(FAILED, detailedText=str(error))
        return FAILED
    if loaded:
        message = RESTART.format(names=", ".join(loaded))
        slicer.util.infoDisplay(message)
        return message
    return None
