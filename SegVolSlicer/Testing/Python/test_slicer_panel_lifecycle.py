"""The panel in the situations of a first session in Slicer: the first-run install, drawing a box with
auto-update on, Cancel and a scene or application close during each step, Reload, a labelmap loaded first,
and a Segment Editor that has another segmentation open.

What it guards: an install on the GUI thread (Slicer frozen for minutes), a nested install from a second
click, an install failure that only the Python console shows; a run started by the removal of the old box;
a Cancel or close that waits for the worker; a model kept alive after Reload and shortcuts lost; a labelmap
segmented as CT; a Segment Editor undo history erased without asking.
"""

import threading
import time

import numpy as np
import pytest
import slicer
from fake_segvol import FakeSegVol
from slicer_app_standins import DIALOG_ANSWERS, Widget, emit, standin_calls
from slicer_core_env import slicer_module, slicer_scene  # noqa: F401  (fixtures)
from test_slicer_widget import panel, segment_count, shortcut, undo_steps  # noqa: F401  (panel: fixture)

from SegVolSlicerLib.errors import InputError
from SegVolSlicerLib.slicer import checks, dependencies

# --- first run: the install ---


@pytest.fixture
def installer(panel, monkeypatch, tmp_path):  # noqa: F811
    """The panel before its first run, with torch to install: `installs` records the fake installTorch's
    calls; set `behaviour` to "fail" or to an Event the install waits for."""
    widget, parameters, dialogs = panel
    widget.runOn.dependencies_ready = False
    state = {"installs": [], "behaviour": None}

    def check(requirements_file, interactive=True, needs_torch=True):
        if state["installs"] and state["installs"][-1] == "done":
            return None
        return dependencies.InstallPlan(">=2.2", str(requirements_file), [], str(tmp_path / "constraints.txt"))

    def install_torch(version):
        assert threading.current_thread() is not threading.main_thread(), "installing on the GUI thread"
        state["installs"].append(version)
        behaviour = state["behaviour"]
        if behaviour == "fail":
            raise dependencies.InstallFailed(dependencies.FAILED)
        if behaviour is not None:
            assert behaviour.wait(30)
        state["installs"].append("done")

    monkeypatch.setattr(dependencies, "check", check)
    monkeypatch.setattr(dependencies, "install_torch", install_torch)
    return widget, parameters, dialogs, state


def test_the_install_runs_beside_a_usable_slicer_and_then_segments(installer):
    widget, parameters, dialogs, state = installer
    release, seen = threading.Event(), []
    state["behaviour"] = release

    def during_install():
        seen.append((widget.ui.applyButton.enabled, widget.ui.statusLabel.text))
        widget.onApplyButton()  # an impatient second click: no second, nested install
        widget._autoRun()  # nor from auto-update
        release.set()

    widget.qtEvents = [during_install]
    widget.onApplyButton()
    ((enabled, status),) = seen
    assert not enabled and status.startswith("Downloading and installing") and "several GB" in status
    assert state["installs"] == [">=2.2", "done"]
    assert widget.ui.statusLabel.text.startswith("Done: SegVol 1") and segment_count(parameters) == 1
    assert dialogs == [] and widget.ui.applyButton.enabled


def test_a_failed_install_shows_in_the_panel_and_a_retry_works(installer):
    widget, parameters, dialogs, state = installer
    state["behaviour"] = "fail"
    widget.onApplyButton()
    assert dialogs == [dependencies.FAILED] and widget.ui.statusLabel.text == dependencies.FAILED
    assert widget.ui.applyButton.enabled and parameters.outputSegmentation is None
    state["behaviour"] = None
    widget.onApplyButton()  # retry
    assert state["installs"] == [">=2.2", ">=2.2", "done"] and segment_count(parameters) == 1


def test_closing_the_scene_during_the_install_ends_the_wait_at_once(installer):
    widget, parameters, dialogs, state = installer
    release, closed = threading.Event(), []
    state["behaviour"] = release
    widget.qtEvents = [lambda: (widget.onSceneStartClose(None, None), closed.append(time.perf_counter()))]
    widget.onApplyButton()
    assert time.perf_counter() - closed[0] < 0.5 and dialogs == []
    release.set()


# --- prompts ---


def test_drawing_a_new_box_with_auto_update_runs_once_the_box_is_drawn(panel):  # noqa: F811
    """Shift+B clears the old box (a point-removed event): that must not arm the auto-update timer, or a run
    without any box starts before the new box is drawn."""
    widget, parameters, dialogs = panel
    parameters.autoUpdate = True
    box = parameters.boxROI
    box.SetXYZ(1.0, 2.0, 3.0)
    box.SetRadiusXYZ(5.0, 5.0, 5.0)
    widget.prompts.auto_timer.stop()
    emit(shortcut(widget, "Shift+B"), "activated()")
    assert box.GetNumberOfControlPoints() == 0 and not widget.prompts.auto_timer.active
    # the user draws the new box: its points appear while placing is on...
    box.SetXYZ(2.0, 2.0, 3.0)
    box.SetRadiusXYZ(4.0, 4.0, 4.0)
    box.InvokeEvent(slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent)
    assert not widget.prompts.auto_timer.active
    widget.ui.boxPlaceWidget.setPlaceModeEnabled(False)  # ...and placing ends: now it is a prompt
    emit(widget.ui.boxPlaceWidget, "activeMarkupsPlaceModeChanged(bool)", False)
    assert widget.prompts.auto_timer.active


def test_clear_prompts_does_not_start_a_run(panel):  # noqa: F811
    widget, parameters, dialogs = panel
    parameters.autoUpdate = True
    widget.onClearPrompts()
    assert not widget.prompts.auto_timer.active and parameters.positivePoints.GetNumberOfControlPoints() == 0


# --- Cancel and closing, during every step ---


def slow_preparation(monkeypatch, seconds):
    """The volume's preparation (SegVol's preprocessing) takes `seconds` and cannot be interrupted."""
    from SegVolSlicerLib.inference import session as session_module

    prepare = session_module.prepare_volume
    started = threading.Event()

    def slow(*args):
        started.set()
        time.sleep(seconds)
        return prepare(*args)

    monkeypatch.setattr(session_module, "prepare_volume", slow)
    return started


@pytest.mark.parametrize("how", ["Cancel", "scene close", "application close"])
def test_cancel_and_closing_during_preprocessing_end_the_wait_at_once(panel, monkeypatch, how):  # noqa: F811
    widget, parameters, dialogs = panel
    started = slow_preparation(monkeypatch, 3.0)
    acted = []

    def act():
        assert started.wait(30)
        acted.append(time.perf_counter())
        if how == "Cancel":
            widget.onApplyButton()
        elif how == "scene close":
            widget.onSceneStartClose(None, None)
        else:
            widget.cleanup()  # what Slicer calls when it quits

    widget.qtEvents = [act]
    widget.runSegmentation(interactive=True)
    assert time.perf_counter() - acted[0] < 0.5, "the wait loop kept going after the run was stopped"
    assert widget.jobs.job is None and dialogs == []
    if how == "Cancel":
        assert widget.ui.statusLabel.text == "Cancelled: no segment was changed."
        assert widget.ui.applyButton.text == "Segment"


def test_the_engine_stops_after_preprocessing_when_cancelled(monkeypatch):
    """The worker itself stops at the end of the preparation, not after the next model pass."""
    from SegVolSlicerLib.engine import EngineHost, VolumeInput
    from SegVolSlicerLib.errors import Cancelled
    from SegVolSlicerLib.prompts import Target
    from SegVolSlicerLib.slicer import worker
    from SegVolSlicerLib.testing.synthetic_ct import make_synthetic_ct

    started = slow_preparation(monkeypatch, 0.5)
    model = FakeSegVol()
    engine = EngineHost(model=model)
    ct = make_synthetic_ct()
    job = worker.WorkerJob(
        lambda reporter: engine.segment(
            VolumeInput("ct", ct.volume, ct.ijk_to_ras, 1), [Target("liver", text="liver")], False, reporter
        )
    ).start()
    assert started.wait(30)
    job.cancel()
    assert job.wait(30)
    with pytest.raises(Cancelled):
        job.outcome()
    assert model.image_calls == 0 and model.text_calls == 0  # no model pass after the cancel
    assert [event.stage for event in job.reporter.drain()] == ["preprocess"]


# --- Reload ---


def test_reload_releases_the_engine_and_keeps_the_shortcuts(panel, slicer_module):  # noqa: F811
    widget, parameters, dialogs = panel
    widget.runSegmentation(interactive=True)
    engine = widget.logic.engine
    assert engine.loaded_model is not None and engine.session_keys()
    # Reload: the old widget's cleanup(), then a new widget's setup() on the same (entered) panel; no enter()
    widget.cleanup()
    assert engine.loaded_model is None and engine.session_keys() == []
    assert widget.logic.engine is not engine and widget.prompts.shortcuts == []
    reloaded = slicer_module.SegVolSlicerWidget(widget.parent)
    reloaded.setup()
    assert sorted(s.key.toString() for s in reloaded.prompts.shortcuts) == ["N", "P", "Shift+B", "Shift+N", "Shift+P"]
    emit(shortcut(reloaded, "P"), "activated()")
    assert reloaded.ui.positivePlaceWidget.placeModeEnabled
    reloaded.cleanup()


# --- input ---


def test_a_labelmap_first_in_the_scene_is_not_the_default_input(slicer_module, slicer_scene):  # noqa: F811
    ijk_to_ras = checks.oblique_lps_ijk_to_ras()
    labels = slicer.util.addVolumeFromArray(
        np.zeros((4, 5, 6), np.int16), ijk_to_ras, "labels", nodeClassName="vtkMRMLLabelMapVolumeNode"
    )
    ct = checks.make_volume(ijk_to_ras)
    parent = Widget("qSlicerScriptedLoadableModuleWidget", "SegVolSlicer")
    widget = slicer_module.SegVolSlicerWidget(parent)
    widget.setup()
    assert widget._parameterNode.inputVolume is ct
    with pytest.raises(InputError, match="'labels' is a labelmap"):
        widget.logic.prepare(labels, None, "liver")
    widget.cleanup()


def test_the_input_selector_lists_scalar_volumes_only():
    from pathlib import Path

    import slicer_app_standins

    ui = slicer_app_standins.load_ui(Path(__file__).resolve().parents[2] / "Resources" / "UI" / "SegVolSlicer.ui")
    selector = slicer_app_standins.child_widget_variables(ui).inputVolumeSelector
    assert selector.nodeTypes == ["vtkMRMLScalarVolumeNode"] and selector.showChildNodeTypes is False


def test_browse_picks_a_file_and_the_folder_button_a_snapshot_folder(panel, tmp_path):  # noqa: F811
    widget, parameters, dialogs = panel
    import ctk

    assert widget.ui.weightsPathLineEdit.filters == ctk.ctkPathLineEdit.Files | ctk.ctkPathLineEdit.Readable
    DIALOG_ANSWERS["directory"] = str(tmp_path)
    emit(widget.ui.weightsFolderButton, "clicked(bool)", False)
    assert widget.ui.weightsPathLineEdit.currentPath == str(tmp_path)


# --- the Segment Editor's undo history ---


def segmentation_named(name):
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    return node


@pytest.mark.parametrize("answer", [True, False])
def test_the_editor_is_switched_from_another_segmentation_only_if_the_user_agrees(panel, monkeypatch, answer):  # noqa: F811
    widget, parameters, dialogs = panel
    asked = []
    monkeypatch.setattr(slicer.util, "confirmYesNoDisplay", lambda text, **kwargs: asked.append(text) or answer)
    other = segmentation_named("manual work")
    widget.editor.setSegmentationNode(other)  # the user was editing it, with its undo history
    widget.runSegmentation(interactive=True)
    assert len(asked) == 1 and "'manual work'" in asked[0]
    assert segment_count(parameters) == 1  # written either way
    if answer:
        assert widget.editor.segmentationNode() is parameters.outputSegmentation and undo_steps(widget) == 1
    else:
        assert widget.editor.segmentationNode() is other and undo_steps(widget) == 0
        assert "Not undoable" in widget.ui.statusLabel.text


def test_auto_update_never_switches_the_segment_editor(panel, monkeypatch):  # noqa: F811
    widget, parameters, dialogs = panel
    monkeypatch.setattr(slicer.util, "confirmYesNoDisplay", lambda text, **kwargs: pytest.fail("asked"))
    other = segmentation_named("manual work")
    widget.editor.setSegmentationNode(other)
    widget.runSegmentation(interactive=False)
    assert widget.editor.segmentationNode() is other and segment_count(parameters) == 1
    assert standin_calls(widget.editor, "setSegmentationNode") == [(other,)]
