"""The panel's run loop without Qt: SegVolSlicerWidget's own code drives real MRML, the module logic and the
worker thread; only the Qt widgets (a recording stub), the Segment Editor and Slicer's dialogs are stand-ins.

What it guards: a run from clicks makes a segment and selects it for refinement, one undo step; results of a
run whose scene was closed, or that belongs to a structure the user moved on from, are not applied; errors of
auto-update runs stay in the status line; Cancel drops a pending auto-update rerun.
"""

import threading
import time

import pytest
import slicer
from fake_segvol import FakeSegVol
from slicer_core_env import slicer_module, slicer_scene  # noqa: F401  (fixtures)

from SegVolSlicerLib import slicer_bridge, slicer_testing
from SegVolSlicerLib.errors import InputError


class Stub:
    """A Qt widget stand-in: any attribute is a Stub, any call is recorded; set attributes stay."""

    def __init__(self):
        self.__dict__["calls"] = []

    def __getattr__(self, name):
        child = self.__dict__[name] = Stub()
        return child

    def __call__(self, *args):
        self.calls.append(args)


class SegmentSelector(Stub):
    """qMRMLSegmentSelectorWidget's segment choice, remembered as the widget does."""

    def __init__(self):
        super().__init__()
        self.__dict__["selected"] = [""]

    def currentSegmentID(self):
        return self.selected[-1]

    def setCurrentSegmentID(self, segment_id):
        self.selected.append(segment_id)


class FakeEditor:
    """The Segment Editor widget's part the panel uses: its node and its undo history."""

    def __init__(self):
        self.saved = 0

    def mrmlSegmentEditorNode(self):
        return None

    def saveStateForUndo(self):
        self.saved += 1


@pytest.fixture
def panel(slicer_module, slicer_scene, monkeypatch):  # noqa: F811
    """(widget, parameters, dialogs): the widget as its setup() leaves it, on a small CT with one click."""
    monkeypatch.setattr(slicer_module.ScriptedLoadableModuleWidget, "__init__", lambda self, parent=None: None)
    dialogs = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kwargs: dialogs.append(text))

    class Parameters(slicer_module.SegVolSlicerParameterNode):
        """What the parameterNodeWrapper adds: GUI connection and VTK observation (not needed here)."""

        def connectGui(self, ui):
            return 1

        def disconnectGui(self, tag):
            pass

        def AddObserver(self, event, method, priority=0.0):
            return 1

        def RemoveObserver(self, tag):
            pass

    ijk_to_ras = slicer_testing.oblique_lps_ijk_to_ras()
    parameters = Parameters()
    parameters.inputVolume = slicer_testing.make_volume(ijk_to_ras)
    parameters.outputSegmentation = None
    parameters.positivePoints, parameters.negativePoints, parameters.boxROI = (
        slicer_bridge.create_prompt_node(slicer.mrmlScene, role)
        for role in (slicer_bridge.POSITIVE_ROLE, slicer_bridge.NEGATIVE_ROLE, slicer_bridge.BOX_ROLE))
    parameters.positivePoints.AddControlPoint(*slicer_testing.ijk_to_ras_points(ijk_to_ras, [12.0, 10.0, 6.0]))
    parameters.zoomIn = False

    widget = slicer_module.SegVolSlicerWidget()
    widget.ui, widget._pollTimer, widget._autoTimer, widget.parent = Stub(), Stub(), Stub(), Stub()
    widget.ui.weightsPathLineEdit.currentPath = ""
    widget.ui.targetSegmentSelector = SegmentSelector()
    widget.parent.isEntered = True
    widget.logic = slicer_module.SegVolSlicerLogic()
    widget.logic.useModel(FakeSegVol())
    widget._dependenciesReady = True
    editor = FakeEditor()
    widget._segmentEditor = lambda segmentation, volume: editor
    widget.setParameterNode(parameters)
    widget.editor = editor
    return widget, parameters, dialogs


def finish(widget):
    """Poll as the panel's QTimer does until the worker is done."""
    deadline = time.monotonic() + 60
    while widget._job is not None:
        assert time.monotonic() < deadline, "the worker did not finish"
        widget._pollJob()
        time.sleep(0.01)


def segment_count(parameters):
    return parameters.outputSegmentation.GetSegmentation().GetNumberOfSegments()


def test_clicks_make_a_selected_segment_in_one_undo_step(panel):
    widget, parameters, dialogs = panel
    widget.runSegmentation(interactive=True)
    assert widget.ui.applyButton.text == "Cancel"
    finish(widget)
    segmentation = parameters.outputSegmentation  # made by the run
    (segment_id,) = [segmentation.GetSegmentation().GetNthSegmentID(0)]
    assert segmentation.GetSegmentation().GetSegment(segment_id).GetName() == "SegVol 1"
    assert widget.ui.targetSegmentSelector.selected == ["", segment_id]
    assert widget.editor.saved == 1 and dialogs == []
    assert widget.ui.statusLabel.text.startswith("Done: SegVol 1")
    assert widget.ui.applyButton.text == "Segment"


def test_results_are_dropped_when_the_scene_closes_meanwhile(panel):
    widget, parameters, dialogs = panel
    parameters.outputSegmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    widget.runSegmentation(interactive=True)
    assert widget._job.wait(60)  # done, but the panel's timer has not seen it yet
    widget.onSceneStartClose(None, None)
    finish(widget)
    assert segment_count(parameters) == 0 and widget.editor.saved == 0 and dialogs == []


def test_new_segment_during_a_run_keeps_the_selection(panel):
    widget, parameters, dialogs = panel
    widget.runSegmentation(interactive=True)
    widget.onNewSegment()  # the user moves on to the next structure while the model runs
    finish(widget)
    assert segment_count(parameters) == 1  # the result is kept...
    assert widget.ui.targetSegmentSelector.selected == ["", ""]  # ...but not selected
    assert parameters.positivePoints.GetNumberOfControlPoints() == 0


@pytest.mark.parametrize("interactive", [True, False])
def test_user_errors_of_auto_update_stay_in_the_status_line(panel, interactive):
    widget, parameters, dialogs = panel

    class RefusingSegVol(FakeSegVol):
        def encode_image(self, image):
            raise InputError("the image cannot be used: try another one")

    widget.logic.useModel(RefusingSegVol())
    widget.runSegmentation(interactive=interactive)
    finish(widget)
    assert widget.ui.statusLabel.text == "the image cannot be used: try another one"
    assert dialogs == (["the image cannot be used: try another one"] if interactive else [])


def test_auto_update_reruns_after_a_run_unless_cancelled(panel):
    widget, parameters, dialogs = panel
    parameters.outputSegmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    release = threading.Event()
    session_for = widget.logic.engine.session

    def slow_session_for(*args):
        release.wait(30)
        return session_for(*args)

    widget.logic.engine.session = slow_session_for
    widget.runSegmentation(interactive=False)
    widget._autoRun()  # a click while the model runs: run again once it is done
    assert widget._rerunPending
    release.set()
    first = widget._job
    while widget._job is first:
        widget._pollJob()
        time.sleep(0.01)
    assert widget._job is not None and not widget._rerunPending  # the rerun started
    finish(widget)
    assert segment_count(parameters) == 1  # the rerun refined the same segment

    release.clear()
    widget.runSegmentation(interactive=False)
    widget._autoRun()
    widget.onApplyButton()  # Cancel
    release.set()
    finish(widget)
    assert widget._job is None and not widget._rerunPending
    assert widget.ui.statusLabel.text == "Cancelled: no segment was changed." and dialogs == []
