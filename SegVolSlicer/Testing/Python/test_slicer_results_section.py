"""The panel's Results section and its side jobs (SegVolSlicerLib/slicer/results_section.py, jobs.py).

What it guards: an Export DICOM SEG failure other than SegVolError (a source file gone, highdicom's ValueError,
a missing package) escaping the slot with the status stuck on "Writing the DICOM SEG..."; a CT under a
transform refused with a message about slices instead of what to do; a second Export (a second prompt, a
second pip run) while the first one installs; a side job whose wait nests inside the run loop, so that the
run's result waits for the side job.
"""

import os
import sys
import threading
import time
import types

import pytest
import slicer
import vtk
from slicer_app_standins import emit
from slicer_core_env import slicer_module, slicer_scene  # noqa: F401  (fixtures)
from test_slicer_clinical import dicom_volume  # noqa: F401  (fixture)
from test_slicer_widget import hold_worker, panel  # noqa: F401  (panel: fixture)

from SegVolSlicerLib.clinical import dicom_seg
from SegVolSlicerLib.errors import InputError
from SegVolSlicerLib.slicer import connection, installs


@pytest.fixture
def exporter(panel, dicom_volume, monkeypatch, tmp_path):  # noqa: F811
    """(widget, path, by_uid): the panel on a CT from the DICOM database with one SegVol segment, the DICOM
    SEG packages present, Export's file field filled in."""
    widget, parameters, dialogs = panel
    node, by_uid = dicom_volume
    monkeypatch.setattr(slicer, "dicomDatabase", types.SimpleNamespace(fileForInstance=by_uid.get), raising=False)
    monkeypatch.setattr(installs.dependencies, "check", lambda *args, **kwargs: None)
    parameters.inputVolume = node
    parameters.targetNames = "liver"
    parameters.positivePoints.RemoveAllControlPoints()
    widget.runSegmentation(interactive=True)
    assert widget.ui.statusLabel.text.startswith("Done: liver")
    path = tmp_path / "out" / "seg.dcm"
    path.parent.mkdir()
    widget.results.dicomSegPathEdit.currentPath = str(path)
    return widget, path, by_uid, dialogs


def export(widget):
    emit(widget.results.exportDicomSegButton, "clicked(bool)", False)


def test_export_writes_the_dicom_seg(exporter):
    widget, path, by_uid, dialogs = exporter
    export(widget)
    assert widget.ui.statusLabel.text == f"Wrote {path}." and path.is_file() and dialogs == []


@pytest.mark.parametrize("failure", ["a source file is gone", "highdicom refuses", "highdicom is missing"])
def test_every_export_failure_ends_in_a_clear_status(exporter, monkeypatch, failure):
    widget, path, by_uid, dialogs = exporter
    if failure == "a source file is gone":
        os.remove(next(iter(by_uid.values())))  # deleted from disk after the import into the database
    elif failure == "highdicom refuses":

        def refuse(*args, **kwargs):
            raise ValueError("Pixel array has an invalid shape")

        monkeypatch.setattr(dicom_seg, "build_dicom_seg", refuse)
    else:
        monkeypatch.setitem(sys.modules, "highdicom", None)  # `import highdicom` raises ImportError
    export(widget)
    status = widget.ui.statusLabel.text
    assert status.startswith("Export DICOM SEG failed, nothing was written: "), status
    assert dialogs == [status] and not path.exists()
    assert widget.results.exportDicomSegButton.enabled


def test_a_transformed_ct_is_refused_with_what_to_do(slicer_module, dicom_volume):  # noqa: F811
    node, by_uid = dicom_volume
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 12.0)
    transform.SetMatrixTransformToParent(matrix)
    node.SetAndObserveTransformNodeID(transform.GetID())
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.GetSegmentation().AddEmptySegment("x")
    logic = slicer_module.SegVolSlicerLogic()
    with pytest.raises(InputError, match="under the transform 'registration'.*Harden transform"):
        logic.prepareDicomSeg(node, segmentation, fileForInstance=by_uid.get)
    transform.SetMatrixTransformToParent(vtk.vtkMatrix4x4())  # identity: nothing moved, nothing refused
    logic.prepareDicomSeg(node, segmentation, fileForInstance=by_uid.get)


def test_export_does_not_start_again_while_its_install_runs(exporter, monkeypatch):
    widget, path, by_uid, dialogs = exporter
    release, checks, installs_run, seen = threading.Event(), [], [], []

    class Plan:
        def message(self):
            return "Installing highdicom..."

        def run(self):
            installs_run.append(1)
            assert release.wait(30)

    monkeypatch.setattr(installs.dependencies, "check", lambda *args, **kwargs: checks.append(1) or Plan())

    def during_install():
        seen.append(widget.results.exportDicomSegButton.enabled)
        export(widget)  # impatient: a second click
        release.set()

    widget.qtEvents = [during_install]
    export(widget)
    assert seen == [False] and checks == [1] and installs_run == [1]
    assert widget.ui.statusLabel.text == f"Wrote {path}."


def test_a_side_job_never_holds_up_the_run(panel, monkeypatch):  # noqa: F811
    """Test connection clicked while a run goes: the run's result is written while the test still waits for
    its server; the test's answer comes after."""
    widget, parameters, dialogs = panel
    release_run, release_test, seen = hold_worker(widget), threading.Event(), []

    def slow_server(url, key):
        assert release_test.wait(30)
        return "SegVolSlicer 0.1.0 · BAAI/SegVol on cpu · 1 of 1 sessions free"

    monkeypatch.setattr(connection, "describe_server", slow_server)

    def click_test_connection():
        emit(widget.ui.testConnectionButton, "clicked(bool)", False)
        release_run.set()

    deadline = time.perf_counter() + 5.0

    def while_the_test_waits():  # Qt events keep coming while the server is silent
        status = widget.ui.statusLabel.text
        if not status.startswith("Done") and time.perf_counter() < deadline:
            widget.qtEvents.append(while_the_test_waits)
            return
        seen.append(status)
        release_test.set()

    widget.qtEvents = [click_test_connection, while_the_test_waits]
    widget.runSegmentation(interactive=True)
    assert seen and seen[0].startswith("Done: SegVol 1"), seen
    assert widget.ui.connectionStatusLabel.text.startswith("SegVolSlicer 0.1.0")
    assert widget.ui.testConnectionButton.enabled
