"""SegVol's Python packages inside 3D Slicer: what is missing, and installing it after asking, never replacing a
package Slicer (or another extension) already has.

torch as the PyTorch extension installs it (light-the-torch picks the CUDA or CPU build for the computer); the
other packages from one of Resources/requirements*.txt. Every distribution the running Python has is pinned at
its installed version (read when the install runs), so pip may add packages but never change one; a requirement
that cannot be met beside them is one message before anything is installed (a distribution already there at
another version, found on the GUI thread without network; anything deeper, found by pip's dry run).
`check` decides and asks on Slicer's main thread (dialogs); the `InstallPlan` it returns resolves, downloads
and installs on the panel's worker thread, so that Slicer never freezes for the minutes a PyTorch download
takes.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass

import slicer

from ..errors import SegVolError

# As pyproject.toml: the oldest torch the engine runs on, without 2.9.0 (its conv3d memory regression).
TORCH_REQUIREMENT = "torch>=2.2,!=2.9.0"
LIGHT_THE_TORCH = "light-the-torch>=0.7"

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
DOES_NOT_FIT = (
    "SegVol's Python packages cannot be installed beside the ones this Slicer has (SegVol never replaces them): "
    "{conflict}. Nothing was installed."
)
# What to do instead, by requirement file, when its packages cannot fit.
INSTEAD = {
    "requirements-dicom.txt": (
        "Export DICOM SEG needs Slicer 5.12 or later (it bundles highdicom); in this Slicer, export the segmentation "
        "with QuantitativeReporting's DICOM exporter (Data module: right-click the segmentation, Export to DICOM)."
    ),
}


class InstallFailed(SegVolError):
    """pip or light-the-torch failed; the message says what to do, the log has pip's output."""

    def __init__(self, message: str, output: str = ""):
        super().__init__(message)
        self.output = output


class DoesNotFit(InstallFailed):
    """A requirement cannot be met without changing a package this Slicer has; nothing was installed."""


def requirement_lines(requirements_file) -> list[str]:
    with open(requirements_file, encoding="utf-8") as file:
        return [line for line in (raw.split("#")[0].strip() for raw in file) if line]


def installed_distributions() -> dict[str, tuple[str, str]]:
    """canonical name -> (name, version) of every distribution in the running Python; where a name is
    installed twice, the one first on sys.path (the one Python imports). Unreadable metadata is skipped."""
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version

    found = {}
    for distribution in importlib.metadata.distributions():
        name = distribution.metadata["Name"]
        if not name or canonicalize_name(name) in found:
            continue
        try:
            Version(distribution.version)
        except (InvalidVersion, TypeError):
            continue  # pip could not use it as a pin either
        found[canonicalize_name(name)] = (name, distribution.version)
    return found


def unsatisfied(lines) -> list[str]:
    """The requirement lines that the running Python does not satisfy."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    installed = installed_distributions()
    missing = []
    for line in lines:
        requirement = Requirement(line)
        found = installed.get(canonicalize_name(requirement.name))
        if found is None or not requirement.specifier.contains(found[1], prereleases=True):
            missing.append(line)
    return missing


def write_constraints(path) -> str:
    """A pip constraints file pinning every installed distribution at its version, read now; returns `path`."""
    lines = [f"{name}=={version}" for name, version in sorted(installed_distributions().values())]
    with open(path, "w", encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n")
    return str(path)


def conflicts_with_installed(lines) -> list[str]:
    """Requirement lines naming a distribution that is installed at a version they exclude: they cannot be met
    without replacing it. E.g. ["pydicom>=3.0.1,<4 (this Slicer has pydicom 2.4.4)"]."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    installed = installed_distributions()
    conflicts = []
    for line in lines:
        requirement = Requirement(line)
        found = installed.get(canonicalize_name(requirement.name))
        if found is not None and not requirement.specifier.contains(found[1], prereleases=True):
            conflicts.append(f"{line} (this Slicer has {found[0]} {found[1]})")
    return conflicts


def does_not_fit(requirements_file, conflict: str) -> str:
    message = DOES_NOT_FIT.format(conflict=conflict)
    instead = INSTEAD.get(os.path.basename(str(requirements_file)))
    return f"{instead} {message}" if instead else message


def torch_installed() -> bool:
    """Whether torch is installed, from its metadata: not PyTorchUtilsLogic.torchInstalled(), which imports
    torch (seconds, and on Slicer's GUI thread, where `check` runs)."""
    return not unsatisfied(["torch"])


def pytorch_extension_installed() -> bool:
    """Whether Slicer has the PyTorch extension (its PyTorchUtils module), without importing it."""
    if "PyTorchUtils" in sys.modules:  # imported already, or blocked (None)
        return sys.modules["PyTorchUtils"] is not None
    return importlib.util.find_spec("PyTorchUtils") is not None


def check(requirements_file, interactive: bool = True, needs_torch: bool = True) -> str | InstallPlan | None:
    """GUI thread, no network: None when SegVol's packages are ready; an InstallPlan the user agreed to (run it
    on a worker thread); otherwise one line saying why not (for the status label).

    Interactive (the user pressed Segment): asks before any download. Not interactive (auto-update): installs
    nothing and opens no dialog. Without torch (SegVol runs on a server): only the client's packages, no PyTorch
    extension.
    """
    torch_version = None
    if needs_torch:
        if not pytorch_extension_installed():
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
    conflicts = conflicts_with_installed(missing)
    if conflicts:
        message = does_not_fit(requirements_file, "; ".join(conflicts))
        if interactive:
            slicer.util.errorDisplay(message)
        return message
    if not interactive:
        return PRESS_SEGMENT
    what = ["torch" + torch_version + " (PyTorch, about 2 GB with CUDA)"] if torch_version else []
    if not slicer.util.confirmOkCancelDisplay(
        "SegVol needs these Python packages. Download and install them now (needs a network connection; "
        "Slicer stays usable meanwhile)?",
        detailedText="\n".join(what + missing),
    ):
        return DECLINED
    constraints = os.path.join(slicer.app.temporaryPath, "SegVolSlicer-constraints.txt")
    return InstallPlan(torch_version, str(requirements_file), missing, constraints)


_INSTALL_LOCK = threading.Lock()


@dataclass(frozen=True)
class InstallPlan:
    """What to install, agreed to by the user; `run` works on any thread (no Qt, no MRML)."""

    torch_version: str | None  # e.g. ">=2.2"; None: torch is there
    requirements_file: str
    missing: list
    constraints: str  # where the constraints file is written when the install runs

    def message(self) -> str:
        size = "several GB" if self.torch_version else "a few hundred MB"
        return INSTALLING.format(size=size)

    def pip_arguments(self) -> list[str]:
        """The panel's pip install: the requirement file with every installed distribution pinned."""
        return ["install", "-r", self.requirements_file, "-c", self.constraints]

    def run(self) -> str | None:
        """Resolve (nothing installed when it cannot fit), then install; returns a restart notice when a
        loaded package was updated. Raises InstallFailed (DoesNotFit). One install at a time: one left running
        by a closed scene finishes before the next starts."""
        with _INSTALL_LOCK:
            return self._install()

    def _install(self) -> str | None:
        to_install = self._resolve() if self.missing else []
        if self.torch_version is not None:
            install_torch(self.torch_version)
        if not self.missing:
            return None
        write_constraints(self.constraints)  # again: with the torch light-the-torch chose
        run_python_module("pip", self.pip_arguments())
        if unsatisfied(self.missing):
            raise InstallFailed(FAILED)
        loaded = [name for name in to_install if name.lower().replace("-", "_") in sys.modules]
        return RESTART.format(names=", ".join(loaded)) if loaded else None

    def _resolve(self) -> list[str]:
        """pip's dry run of the same install (torch's requirement added where torch comes first): the names
        of the distributions it would install. Raises DoesNotFit with pip's reason when none fits."""
        write_constraints(self.constraints)
        report = os.path.join(os.path.dirname(self.constraints), "SegVolSlicer-install-report.json")
        torch = [f"torch{self.torch_version}"] if self.torch_version is not None else []
        try:
            run_python_module("pip", [*self.pip_arguments(), *torch, "--dry-run", "--report", report])
        except InstallFailed as failed:
            conflict = conflict_lines(failed.output)
            if conflict:
                raise DoesNotFit(does_not_fit(self.requirements_file, "; ".join(conflict)), failed.output) from None
            raise
        with open(report, encoding="utf-8") as file:
            return [entry["metadata"]["name"] for entry in json.load(file).get("install", [])]


def conflict_lines(pip_output: str) -> list[str]:
    """pip's reasons for an impossible resolution ("highdicom 0.27.0 depends on pydicom>=3.0.1", "The user
    requested (constraint) pydicom==2.4.4"); [] when the failure was something else (the network)."""
    lines = [line.strip() for line in pip_output.splitlines()]
    if "The conflict is caused by:" in lines:
        start = lines.index("The conflict is caused by:") + 1
        end = next((i for i in range(start, len(lines)) if not lines[i]), len(lines))
        return lines[start:end]
    return [line.removeprefix("ERROR: ") for line in lines if line.startswith("ERROR: No matching distribution")]


def install_torch(version: str) -> None:
    """torch as the PyTorch extension installs it (light-the-torch picks the CUDA or CPU build for this
    computer), but in a subprocess whose output goes to the log and with every installed distribution pinned:
    PyTorchUtils' own installTorch runs pip through slicer.util, which handles Qt events while pip runs
    (only the GUI thread may) and passes no constraints."""
    if not light_the_torch_installed():
        run_python_module("pip", ["install", LIGHT_THE_TORCH])
    constraints = write_constraints(os.path.join(tempfile.gettempdir(), "SegVolSlicer-torch-constraints.txt"))
    run_python_module("light_the_torch", ["install", f"torch{version}", "-c", constraints])


def light_the_torch_installed() -> bool:
    """Whether light-the-torch is there (the PyTorch extension installs it too): then it is not installed again."""
    return importlib.util.find_spec("light_the_torch") is not None


def run_python_module(module: str, arguments: list) -> str:
    """`PythonSlicer -m module arguments` (any thread); its output goes to the log and is returned. Raises
    InstallFailed (with the output) when it fails."""
    python = shutil.which("PythonSlicer") or sys.executable
    try:
        completed = subprocess.run(
            [python, "-m", module, *arguments], capture_output=True, text=True, encoding="utf-8", errors="replace"
        )
    except OSError as error:
        raise InstallFailed(f"{FAILED} ({error})") from None
    output = completed.stdout + completed.stderr
    for line in output.splitlines():
        logging.info(line)
    if completed.returncode != 0:
        raise InstallFailed(FAILED, output)
    return output
