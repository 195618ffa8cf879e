"""The panel's life in a Slicer that has none of SegVol's packages yet (the first session after installing the
extension): the module registers, the panel sets up, is entered and left, auto-update and Segment say what to do
or offer the install, a declined install installs nothing, and Reload works; torch and the other packages of
the requirement files are never imported. In the Slicer twin (.ci/slicer-twin) they are not even installed.

What it guards: a panel that needs torch (or httpx, highdicom...) to set up, to show the install prompt or to
reload, so that a stock Slicer shows an error instead of the offer to install.
"""

import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest
import slicer
from slicer_app_standins import Widget
from slicer_core_env import slicer_module, slicer_scene  # noqa: F401  (fixtures)
from test_slicer_stock_imports import requirement_import_names

from SegVolSlicerLib.slicer import checks, dependencies

STANDINS = Path(__file__).resolve().parents[3] / ".ci" / "slicer-twin-standins"  # PyTorchUtils, light-the-torch
IN_TWIN = bool(os.environ.get("SEGVOL_SLICER_TWIN"))


def open_panel(slicer_module):  # noqa: F811
    """The widget as Slicer makes it when the user opens the module: setup(), then enter()."""
    parent = Widget("qSlicerScriptedLoadableModuleWidget", "SegVolSlicer")
    widget = slicer_module.SegVolSlicerWidget(parent)
    widget.setup()
    parent._standin["values"]["isEntered"] = True  # a read-only property that the application sets
    widget.enter()
    return widget


class Dialogs:
    """Slicer's message boxes, recorded; `answers` are the user's replies to OK/Cancel confirmations (the install
    prompt); Yes/No questions (switch the Segment Editor to this segmentation?) are answered Yes."""

    def __init__(self, monkeypatch, answers=()):
        self.shown, self.answers = [], list(answers)
        for name in ("errorDisplay", "infoDisplay", "warningDisplay"):
            monkeypatch.setattr(slicer.util, name, lambda text, name=name, **kwargs: self.shown.append((name, text)))
        monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", self._confirm)
        monkeypatch.setattr(
            slicer.util, "confirmYesNoDisplay", lambda text, **kwargs: self.shown.append(("yes", text)) or True
        )

    def _confirm(self, text, **kwargs):
        self.shown.append(("confirm", kwargs.get("detailedText", "")))
        return self.answers.pop(0)

    def of_kind(self, *kinds) -> list:
        return [(kind, text) for kind, text in self.shown if kind in kinds]


def test_the_panels_life_without_segvols_packages(slicer_module, slicer_scene, monkeypatch):  # noqa: F811
    blocked = requirement_import_names()
    if IN_TWIN:  # the twin holds what Slicer bundles (5.12: highdicom, pydicom), nothing else of SegVol's
        bundled = {
            line.split("==")[0].lower() for line in dependencies.requirement_lines(os.environ["SEGVOL_SLICER_BUNDLED"])
        }
        present = [name for name in blocked if importlib.util.find_spec(name) is not None]
        assert [name for name in present if name.lower() not in bundled] == []
    loaded_before = {name for name in blocked if name in sys.modules}  # by other tests of this process
    if importlib.util.find_spec("PyTorchUtils") is None:
        monkeypatch.syspath_prepend(str(STANDINS))
    import PyTorchUtils

    if not IN_TWIN:  # this Python has SegVol's packages: the installer sees them missing, as in a stock Slicer
        monkeypatch.setattr(PyTorchUtils.PyTorchUtilsLogic, "torchInstalled", staticmethod(lambda: False))
        monkeypatch.setattr(dependencies, "unsatisfied", lambda lines: list(lines))
    dialogs = Dialogs(monkeypatch, answers=[False])
    parent = types.SimpleNamespace()
    slicer_module.SegVolSlicer(parent)  # the module's registration at start-up
    assert parent.title == "SegVol" and parent.categories == ["Segmentation"]

    widget = open_panel(slicer_module)
    widget.exit()
    widget.enter()
    parameters = widget._parameterNode
    parameters.inputVolume = checks.make_volume(checks.oblique_lps_ijk_to_ras())
    parameters.targetNames = "liver"

    # auto-update never opens a dialog: the status says what to do
    widget.runSegmentation(interactive=False)
    assert widget.ui.statusLabel.text == dependencies.PRESS_SEGMENT and dialogs.shown == []

    # Segment in a Slicer without the PyTorch extension: one message naming it
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    widget.onApplyButton()
    assert widget.ui.statusLabel.text == dependencies.NEEDS_PYTORCH_EXTENSION
    assert dialogs.shown == [("errorDisplay", dependencies.NEEDS_PYTORCH_EXTENSION)]
    monkeypatch.setitem(sys.modules, "PyTorchUtils", PyTorchUtils)

    # with it: the install prompt lists what would be installed; the user declines, nothing is installed
    monkeypatch.setattr(dependencies, "run_python_module", lambda *args: pytest.fail(f"installed {args}"))
    dialogs.shown.clear()
    widget.onApplyButton()
    ((kind, listed),) = dialogs.shown
    assert kind == "confirm" and "torch>=2.2" in listed and "monai" in listed
    assert widget.ui.statusLabel.text == dependencies.DECLINED
    assert widget.ui.applyButton.enabled and not widget.installer.installing

    # Reload: the old widget's cleanup(), a new widget's setup() on the same (entered) panel
    widget.cleanup()
    reloaded = slicer_module.SegVolSlicerWidget(widget.parent)
    reloaded.setup()
    assert reloaded._parameterNode is not None
    reloaded.exit()
    reloaded.cleanup()
    assert {name for name in blocked if name in sys.modules} == loaded_before, "a SegVol package was imported"
