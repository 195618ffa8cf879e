"""The panel's Run on settings (SegVolSlicerLib/slicer/run_on.py): the weights field and the downloaded
weights' place.

What it guards: a snapshot folder or a cleared weights field not remembered (the field's validator, made from
its name filters, refused both, so the field never announced them); the downloaded weights' location hidden
from the user, or kept in a Slicer-version folder, with no way to remove them.
"""

from pathlib import Path

import slicer
from slicer_app_standins import DIALOG_ANSWERS, Widget, emit
from slicer_core_env import slicer_module, slicer_scene  # noqa: F401  (fixtures)
from test_slicer_widget import panel  # noqa: F401  (fixture)

from SegVolSlicerLib import weights
from SegVolSlicerLib.slicer import run_on


def weights_setting():
    import qt  # the stand-in, once slicer_core_env installed it

    return qt.QSettings().value(run_on.WEIGHTS_SETTING)


def restarted(slicer_module):  # noqa: F811
    """The panel of a Slicer started again: same settings."""
    widget = slicer_module.SegVolSlicerWidget(Widget("qSlicerScriptedLoadableModuleWidget", "SegVolSlicer"))
    widget.setup()
    return widget


def test_a_snapshot_folder_and_a_cleared_field_are_remembered(panel, slicer_module, tmp_path):  # noqa: F811
    widget, parameters, dialogs = panel
    DIALOG_ANSWERS["directory"] = str(tmp_path)
    emit(widget.ui.weightsFolderButton, "clicked(bool)", False)
    assert weights_setting() == str(tmp_path)
    again = restarted(slicer_module)
    assert again.ui.weightsPathLineEdit.currentPath == str(tmp_path)
    again.ui.weightsPathLineEdit.currentPath = ""  # back to the download
    assert weights_setting() == ""
    again.cleanup()
    third = restarted(slicer_module)
    assert third.ui.weightsPathLineEdit.currentPath == ""
    third.cleanup()  # its scene observers go before the scene does


def test_the_downloaded_weights_are_shown_and_can_be_removed(panel, monkeypatch, tmp_path):  # noqa: F811
    widget, parameters, dialogs = panel
    folder = tmp_path / "segvol-home"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"\0" * (3 << 20))
    monkeypatch.setenv("SEGVOL_HOME", str(folder))
    widget.runOn.show_weights_location()
    assert widget.ui.weightsLocationLabel.text == f"Downloaded weights: {folder} (3 MB)"
    assert widget.ui.removeWeightsButton.enabled
    asked = []
    monkeypatch.setattr(slicer.util, "confirmYesNoDisplay", lambda text, **kwargs: asked.append(text) or True)
    emit(widget.ui.removeWeightsButton, "clicked(bool)", False)
    assert len(asked) == 1 and str(folder) in asked[0] and not folder.exists()
    assert widget.ui.weightsLocationLabel.text.endswith("(nothing downloaded yet)")
    assert not widget.ui.removeWeightsButton.enabled


def test_the_download_folder_belongs_to_no_slicer_version(monkeypatch):
    monkeypatch.delenv("SEGVOL_HOME", raising=False)
    assert weights.default_folder() == Path.home() / ".cache" / "segvol" / "BAAI-SegVol"
