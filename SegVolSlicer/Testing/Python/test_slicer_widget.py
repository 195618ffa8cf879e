"""The panel's run loop without Qt: SegVolSlicerWidget's own code drives real MRML, the module logic and the
worker thread; only the Qt widgets (a recording stub), the Segment Editor and Slicer's dialogs are stand-ins.

What it guards: a run from clicks makes a segment and selects it for refinement, one undo step; results of a
run whose scene was closed, or that belongs to a structure the user moved on from, are not applied; errors of
auto-update runs stay in the status line; Cancel drops a pending auto-update rerun; the run loop keeps the
worker at speed while Slicer's GUI thread holds the GIL, handles Qt events every 100 ms or sooner, and hands
the worker only plain values (never a scene node).
"""

import threading
import time

import gil_emulation
import numpy as np
import pytest
import slicer
import vtk
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
    widget.ui, widget._autoTimer, widget.parent = Stub(), Stub(), Stub()
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
    widget.qtEvents = []  # what the user does while the model runs: one per slicer.app.processEvents()
    monkeypatch.setattr(slicer.app, "processEvents", lambda: widget.qtEvents.pop(0)() if widget.qtEvents else None)
    return widget, parameters, dialogs


def hold_worker(widget):
    """Keep the next run's worker waiting until the returned Event is set (so that Qt events happen first)."""
    release = threading.Event()
    session = widget.logic.engine.session

    def held_session(*args):
        assert release.wait(30)
        return session(*args)

    widget.logic.engine.session = held_session
    return release


def segment_count(parameters):
    return parameters.outputSegmentation.GetSegmentation().GetNumberOfSegments()


def test_clicks_make_a_selected_segment_in_one_undo_step(panel):
    widget, parameters, dialogs = panel
    release, during = hold_worker(widget), []
    widget.qtEvents = [lambda: (during.append(widget.ui.applyButton.text), release.set())]
    widget.runSegmentation(interactive=True)
    assert during == ["Cancel"]
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
    release = hold_worker(widget)

    def close_when_done():  # the worker is done, but the run loop has not seen it yet
        release.set()
        assert widget._job.wait(60)
        widget.onSceneStartClose(None, None)

    widget.qtEvents = [close_when_done]
    widget.runSegmentation(interactive=True)
    assert segment_count(parameters) == 0 and widget.editor.saved == 0 and dialogs == []


def test_new_segment_during_a_run_keeps_the_selection(panel):
    widget, parameters, dialogs = panel
    release = hold_worker(widget)
    # the user moves on to the next structure while the model runs
    widget.qtEvents = [lambda: (widget.onNewSegment(), release.set())]
    widget.runSegmentation(interactive=True)
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
    assert widget.ui.statusLabel.text == "the image cannot be used: try another one"
    assert dialogs == (["the image cannot be used: try another one"] if interactive else [])


def test_auto_update_reruns_after_a_run_unless_cancelled(panel):
    widget, parameters, dialogs = panel
    parameters.outputSegmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    release, runs = hold_worker(widget), []
    run = widget.logic.run
    widget.logic.run = lambda *args: (runs.append(args[0]), run(*args))[1]

    def click_during_run():  # a click while the model runs: run again once it is done
        widget._autoRun()
        assert widget._rerunPending
        release.set()

    widget.qtEvents = [click_during_run]
    widget.runSegmentation(interactive=False)
    assert len(runs) == 2  # the rerun ran, in the same loop
    assert widget._job is None and not widget._rerunPending
    assert segment_count(parameters) == 1  # the rerun refined the same segment

    release.clear()
    widget.qtEvents = [widget._autoRun, widget.onApplyButton, release.set]  # click, Cancel
    widget.runSegmentation(interactive=False)
    assert widget._job is None and not widget._rerunPending
    assert widget.ui.statusLabel.text == "Cancelled: no segment was changed." and dialogs == []


def test_cancel_ends_the_run_at_once(panel):
    widget, parameters, dialogs = panel
    session = widget.logic.engine.session
    widget.logic.engine.session = lambda volume, reporter: (reporter.cancel.wait(30), session(volume, reporter))[1]
    clicked = []
    widget.qtEvents = [lambda: clicked.append(time.perf_counter()) or widget.onApplyButton()]
    widget.runSegmentation(interactive=True)
    assert time.perf_counter() - clicked[0] < 1.0
    assert widget.ui.statusLabel.text == "Cancelled: no segment was changed."


def contains_scene_objects(value, seen=None) -> bool:
    """Whether a VTK/MRML object is reachable from `value` through containers and object attributes."""
    seen = set() if seen is None else seen
    if id(value) in seen or isinstance(value, (str, bytes, int, float, bool, type(None), np.ndarray)):
        return False
    seen.add(id(value))
    if isinstance(value, vtk.vtkObjectBase):
        return True
    if isinstance(value, dict):
        return any(contains_scene_objects(v, seen) for pair in value.items() for v in pair)
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(contains_scene_objects(v, seen) for v in value)
    return hasattr(value, "__dict__") and contains_scene_objects(vars(value), seen)


def test_the_worker_gets_plain_values_only(panel):
    """MRML is not thread-safe: the worker reads no scene node (the volume is known by its node ID)."""
    widget, parameters, dialogs = panel
    engine, seen = widget.logic.engine, []

    class CheckingEngine:  # the engine is swappable (e.g. a SegVol server); it sees what any engine would
        def __getattr__(self, name):
            return getattr(engine, name)

        def segment(self, *args):
            seen.append((threading.current_thread() is threading.main_thread(), contains_scene_objects(args)))
            return engine.segment(*args)

    widget.logic.engine = CheckingEngine()
    widget.runSegmentation(interactive=True)
    assert seen == [(False, False)] and segment_count(parameters) == 1
    assert engine.session_keys() == [parameters.inputVolume.GetID()]


def test_worker_keeps_its_speed_while_slicer_holds_the_gil(panel):
    """Inside Slicer the GUI thread holds the GIL whenever Qt runs. A loop that polls from a QTimer lets the
    worker run a few times a second (~2 % of its speed); the run loop must keep it at >= 70 % while still
    handling Qt events at least every 100 ms. benchmarks/run_loop_benchmark.py reports the figures."""
    widget, parameters, dialogs = panel
    steps, event_handling_s = 1500, 0.005  # each round of Qt events: 5 ms in native code holding the GIL
    free = min(gil_emulation.free_running_seconds(steps) for _ in range(2))
    segment = widget.logic.engine.segment
    best, gaps = 0.0, []
    for _ in range(3):  # the machine is shared: a busy moment must not fail the test
        durations, event_times = [], []

        def slow_segment(*args, durations=durations):
            durations.append(gil_emulation.torch_like_work(steps))
            return segment(*args)

        def handle_qt_events(event_times=event_times):
            event_times.append(time.perf_counter())
            gil_emulation.hold_gil(event_handling_s)

        widget.logic.engine.segment = slow_segment
        slicer.app.processEvents = handle_qt_events  # the panel fixture restores it
        start = time.perf_counter()
        widget.runSegmentation(interactive=True)
        end = time.perf_counter()
        times = [start, *event_times, end]
        gaps.append(max(b - a for a, b in zip(times, times[1:])))
        best = max(best, free / durations[0])
        if best >= 0.7:
            break
    assert best >= 0.7, f"worker at {best:.0%} of its free-running speed"
    assert min(gaps) <= 0.1, f"Qt events waited {min(gaps) * 1000:.0f} ms"
