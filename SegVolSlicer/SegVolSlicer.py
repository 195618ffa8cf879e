"""SegVol in 3D Slicer: segment CT structures from anatomy names, clicks and a box.

Module, widget, logic and self-test on Slicer's scripted-module template. The widget only collects input (in a
parameter node) and shows progress; SegVolSlicerLogic is Qt-free; everything it calls lives in SegVolSlicerLib.
pytest runs this file against slicer-core with stand-ins for the application-only modules
(Testing/Python/slicer_core_env.py).
"""

import logging
import os
import sys
import threading
import traceback
from dataclasses import dataclass, field
from typing import Annotated

import numpy as np
import qt
import slicer
import vtk
from slicer import (
    vtkMRMLMarkupsCurveNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLMarkupsROINode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from SegVolSlicerLib import runtime
from SegVolSlicerLib.engine import EngineHost, ModelChoice, SessionOptions, TargetJob, VolumeInput
from SegVolSlicerLib.errors import Cancelled, InputError, SegVolError
from SegVolSlicerLib.prompts import Box, Target
from SegVolSlicerLib.reporting import NO_REPORT, Reporter
from SegVolSlicerLib.slicer import (
    bridge,
    campaign_section,
    checks,
    clinical_results,
    dependencies,
    editor,
    installs,
    jobs,
    prompt_tools,
    results_section,
    run_on,
    segments,
    worker,
)

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
REQUIREMENTS_FILE = os.path.join(MODULE_DIR, "Resources", "requirements.txt")
CLIENT_REQUIREMENTS_FILE = os.path.join(MODULE_DIR, "Resources", "requirements-client.txt")
DICOM_REQUIREMENTS_FILE = os.path.join(MODULE_DIR, "Resources", "requirements-dicom.txt")  # Export DICOM SEG
# How clicks on a segment with a result act: locally (SegVolSession.refine, beyond the official pipeline) or
# through the whole official pipeline.
CORRECTIONS = ("around the new clicks (fast)", "whole structure (official)")
STAGE_TITLES = {
    "download": "Downloading weights",
    "load": "Loading model",
    "preprocess": "Preparing volume",
    "zoom-out": "Zoom-out",
    "zoom-in": "Zoom-in window",
    "upload": "Sending volume",
    "correction": "Correcting window",
}


class SegVolSlicer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SegVol")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["SegVolSlicer contributors"]
        self.parent.helpText = _("""
Promptable CT segmentation with <a href="https://github.com/BAAI-DCAI/SegVol">SegVol</a>: type anatomy names
(several at once, comma separated), click positive (P) and negative (N) points, or draw a box (Shift+B), then
press Segment. Each name gives one segment; clicks and the box refine the selected segment or make a new one.
Each SegVol run is one step in the Segment Editor's undo history (Undo/Redo here or in the Segment Editor). The
Segment Editor keeps the history of one segmentation only: SegVol asks before switching it to another one, and a
run that is not switched to cannot be undone there.
""")
        self.parent.acknowledgementText = _("""
SegVol: Du Y., Bai F., Huang T., Zhao B. "SegVol: Universal and Interactive Volumetric Medical Image
Segmentation", NeurIPS 2024. Model and weights by BAAI-DCAI (BAAI/SegVol on the Hugging Face hub).
""")


@parameterNodeWrapper
class SegVolSlicerParameterNode:
    """GUI state, saved with the scene.

    inputVolume - the CT to segment; outputSegmentation - where segments go;
    targetNames - anatomy names, comma separated; positivePoints / negativePoints / boxROI - prompt nodes;
    positiveStroke / negativeStroke - stroke (open curve) nodes; corrections - how clicks on a segment with a
    result act (CORRECTIONS); zoomIn - SegVol's zoom-in refinement; autoUpdate - rerun when a prompt changes;
    device - where the model runs; useSegmentEditorSettings - honour the Segment Editor's overwrite/mask options.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    targetNames: str = ""
    positivePoints: vtkMRMLMarkupsFiducialNode
    negativePoints: vtkMRMLMarkupsFiducialNode
    boxROI: vtkMRMLMarkupsROINode
    positiveStroke: vtkMRMLMarkupsCurveNode
    negativeStroke: vtkMRMLMarkupsCurveNode
    corrections: Annotated[str, Choice(list(CORRECTIONS))] = CORRECTIONS[0]
    zoomIn: bool = True
    autoUpdate: bool = False
    device: Annotated[str, Choice(list(runtime.DEVICES))] = "auto"
    useSegmentEditorSettings: bool = False


#
# Logic (Qt-free)
#


@dataclass(eq=False)  # compared by identity: a run's own request
class SegmentationRequest:
    """Everything a run needs, read from the scene on the GUI thread. The worker thread reads only the
    engine's volume (arrays, the node ID, plain values) and the jobs; the nodes are where `apply` writes the
    results, back on the GUI thread."""

    volumeNode: vtkMRMLScalarVolumeNode
    segmentationNode: vtkMRMLSegmentationNode
    volume: VolumeInput  # key: the volume node ID; signature: (voxels' modification time, world IJK-to-RAS)
    targets: list  # [(prompts.Target, segments.SegmentSpec)]; each spec names its segment ID (new ones too)
    jobs: list  # [engine.TargetJob], one per target: result key (segmentation node ID, segment ID)
    zoomIn: bool
    mask: np.ndarray | None = None  # refine an existing segment: its voxels (K, J, I)
    # Set (GUI thread) when the volume leaves the scene while the run goes: whatever the engine opened for it
    # meanwhile (a server session) is closed when the run ends, not left behind.
    volumeGone: threading.Event = field(default_factory=threading.Event)

    @property
    def voxels(self):
        return self.volume.voxels

    @property
    def ijkToRas(self):
        return self.volume.ijk_to_ras


class SegVolSlicerLogic(ScriptedLoadableModuleLogic):
    """Prepare (GUI thread) -> run (any thread) -> apply (GUI thread); `process` does all three in a row.

    The engine (SegVolSlicerLib.engine) keeps the loaded model, one inference session per volume (its
    embedding caches make a new click cost a decoder pass) and the last result of each segment, under the
    result key (segmentation node ID, segment ID) chosen here before the run; the logic keeps no results. Only
    the 2 most recently used sessions are kept (each holds a float copy of its volume and up to 768 MB of
    embeddings: with 0.7 GB of weights a GPU stays under 4 GB).
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.engine = self._newEngine()  # or a client.RemoteEngine: the same Engine over a SegVol server
        self._server = None  # (url, key) while the engine is a server's
        # What each segment held right after SegVol wrote it (segments.segment_stamp): a segment that differs was
        # edited since (by hand, by Undo), and a correction starts from its voxels as they are now.
        self._writtenAt = {}
        self._running = set()  # requests prepared and not yet run to their end: their volume may leave meanwhile
        self._madeFromBox = {}  # the box a segment refined from its mask was made from, by result key
        self.lastStatistics = []  # clinical.statistics.SegmentStatistics of the segments the last apply wrote
        self.lastNotes = []  # what the last apply could not do as asked (e.g. a Segment Editor setting)

    @staticmethod
    def _newEngine(model=None):
        return EngineHost(
            model=model,
            max_sessions=2,
            memory_budget_mb=2 * 768 + 1024,  # sessions and the kept results together
            session_options=SessionOptions(cache_budget_mb=768, probabilities=True),  # each segment's confidence
        )

    def getParameterNode(self):
        return SegVolSlicerParameterNode(super().getParameterNode())

    def useModel(self, model) -> None:
        """Run with an already loaded SegVol (scripts, tests) instead of loading weights."""
        self._replaceEngine(self._newEngine(model))

    def useThisComputer(self) -> None:
        """Run the model in Slicer's Python (the default)."""
        if self._server is not None:
            self._replaceEngine(self._newEngine())

    def useServer(self, url: str, apiKey: str | None = None) -> None:
        """Run on a SegVol server (`segvol serve`, e.g. on a GPU box) through the torch-free client. The URL and
        key come from the application settings, never from the scene."""
        from SegVolSlicerLib.client import RemoteEngine

        url = (url or "").strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise InputError(
                "no SegVol server address: enter it under Advanced, e.g. http://gpu-server:8765 "
                "(start the server there with `segvol serve`)"
            )
        server = (url, (apiKey or "").strip() or None)
        if server != self._server:  # the same server keeps its sessions (uploaded volumes)
            self._replaceEngine(RemoteEngine(*server))
            self._server = server

    def _replaceEngine(self, engine) -> None:
        old, remote = self.engine, self._server is not None
        self.engine, self._server = engine, None
        self._writtenAt.clear()  # results are corrected where they were made
        self._madeFromBox.clear()
        if remote:
            old.close(wait_s=0)  # its sessions end in the background: the GUI thread never waits on a server
        else:
            old.close()  # a local model's memory is freed

    def release(self) -> None:
        """Let go of the model, the sessions and the GPU memory (module cleanup and Reload)."""
        self._replaceEngine(self._newEngine())
        torch = sys.modules.get("torch")  # never imported just for this
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def forgetVolume(self, volumeNodeID: str) -> None:
        """Drop the session and kept results of a volume (removed from the scene, or its voxels changed)."""
        self._volumesGone(lambda key: key == volumeNodeID)
        self.engine.forget(volumeNodeID)

    def _volumesGone(self, gone) -> None:
        for request in list(self._running):
            if gone(request.volume.key):
                request.volumeGone.set()

    def forgetSegmentation(self, segmentationNodeID: str) -> None:
        """Drop the kept results of a segmentation's segments (the node was removed)."""
        self.engine.forget_results(segmentationNodeID)
        self._writtenAt = {key: at for key, at in self._writtenAt.items() if key[0] != segmentationNodeID}
        self._madeFromBox = {key: box for key, box in self._madeFromBox.items() if key[0] != segmentationNodeID}

    def forgetRemovedVolumes(self, scene) -> None:
        """Drop what the engine keeps of volumes and segmentations no longer in `scene` (after a scene close,
        node IDs are reused)."""
        self._volumesGone(lambda key: scene.GetNodeByID(key) is None)
        self.engine.keep_only(key for key in self.engine.session_keys() if scene.GetNodeByID(key) is not None)
        for segmentationNodeID in {key[0] for key in self._writtenAt}:
            if scene.GetNodeByID(segmentationNodeID) is None:
                self.forgetSegmentation(segmentationNodeID)

    # --- the three steps ---

    def prepare(
        self,
        volumeNode,
        segmentationNode=None,
        names="",
        pointNodes=(),
        roiNode=None,
        refineSegmentID=None,
        zoomIn=True,
        corrections=CORRECTIONS[0],
    ) -> SegmentationRequest:
        """Read the volume and prompts from the scene (GUI thread). Raises InputError for unusable input.

        Without a segmentation node, a new one is made (`request.segmentationNode`) once the input is usable.
        `corrections` (CORRECTIONS): whether a target whose segment has a result is corrected around the new
        clicks (from the segment's voxels as they are now), or run through the whole official pipeline.
        """
        volume = self._volumeInput(volumeNode)
        self.forgetRemovedVolumes(volumeNode.GetScene())
        self.engine.forget_if_changed(volume.key, volume.signature)
        points, box = bridge.read_prompts(pointNodes, roiNode, volume.ijk_to_ras, volume.voxels.shape)
        if refineSegmentID and segmentationNode is not None and not segments.split_names(names):
            box = box or self._boxWhenOnlyNegative(volume, points, segmentationNode, refineSegmentID, volumeNode)
        targets = segments.plan_targets(segments.split_names(names), points, box, segmentationNode, refineSegmentID)
        if segmentationNode is None:
            segmentationNode = segments.create_segmentation_node(volumeNode)
        segments.check_labelmap_source(segmentationNode)  # now, not after the model ran
        targets = [(target, segments.with_segment_id(segmentationNode, spec)) for target, spec in targets]
        local = corrections == CORRECTIONS[0] and zoomIn
        jobs = [self._job(volume, volumeNode, segmentationNode, target, spec, local) for target, spec in targets]
        return self._pending(SegmentationRequest(volumeNode, segmentationNode, volume, targets, jobs, bool(zoomIn)))

    def _boxWhenOnlyNegative(self, volume, points, segmentationNode, segmentID, volumeNode):
        """Negative clicks alone on a segment say what to remove, not what the segment is: the box its result
        was made from (a segment refined from its mask), else what it covers now, stands for the structure."""
        if points is None or points.has_positive:
            return None
        key = (segmentationNode.GetID(), segmentID)
        if key in self._madeFromBox and self.engine.has_result(volume, key):
            return self._madeFromBox[key]
        if segmentationNode.GetSegmentation().GetSegment(segmentID) is None:
            return None
        mask = segments.segment_mask(segmentationNode, segmentID, volumeNode)
        return Box.around_mask(mask) if mask.any() else None

    def _job(self, volume, volumeNode, segmentationNode, target, spec, local) -> TargetJob:
        key = (segmentationNode.GetID(), spec.segment_id)
        segment = segmentationNode.GetSegmentation().GetSegment(spec.segment_id)
        if segment is None:  # a new segment, or one removed since: nothing of an older one is corrected
            self.engine.forget_results(key)
            self._writtenAt.pop(key, None)
            self._madeFromBox.pop(key, None)
            return TargetJob(target, key)
        if not (local and self.engine.has_result(volume, key)):
            return TargetJob(target, key)
        current = None
        if not segments.segment_unchanged(segmentationNode, spec.segment_id, self._writtenAt.get(key)):
            current = segments.segment_mask(segmentationNode, spec.segment_id, volumeNode)  # edited since
        return TargetJob(target, key, correct=True, current_mask=current)

    def prepareFromSegment(self, volumeNode, segmentationNode, segmentID) -> SegmentationRequest:
        """Refine an existing segment (drawn by hand, made by another tool): SegVol segments it again from the
        prompts the official evaluation derives from a label, so that clicks then correct it locally."""
        if segmentationNode is None or not segmentID:
            raise InputError("select the segment to refine first")
        volume = self._volumeInput(volumeNode)
        self.engine.forget_if_changed(volume.key, volume.signature)
        spec = segments.spec_for_segment(segmentationNode, segmentID)
        segments.check_labelmap_source(segmentationNode)
        mask = segments.segment_mask(segmentationNode, segmentID, volumeNode)
        target = Target(spec.name, box=Box.around_mask(mask))  # the mask's box: what the segment covers
        job = TargetJob(target, (segmentationNode.GetID(), segmentID))
        return self._pending(
            SegmentationRequest(volumeNode, segmentationNode, volume, [(target, spec)], [job], True, mask=mask)
        )

    def _pending(self, request: SegmentationRequest) -> SegmentationRequest:
        """From now until its run ends, the request's volume leaving the scene marks it (volumeGone)."""
        self._running.add(request)
        return request

    @staticmethod
    def _volumeInput(volumeNode) -> VolumeInput:
        voxels, ijkToRas = bridge.read_volume(volumeNode)
        signature = (volumeNode.GetImageData().GetMTime(), ijkToRas.tobytes())
        return VolumeInput(volumeNode.GetID(), voxels, ijkToRas, signature=signature)

    def run(self, request: SegmentationRequest, reporter: Reporter = NO_REPORT, weights=None, device="auto"):
        """Segment every target (any thread: no scene access). A GPU out of memory falls back to the CPU."""
        engine = self.engine
        try:
            engine.select(ModelChoice(weights or None, device))
            if request.mask is not None:
                return [engine.segment_from_mask(request.volume, request.jobs[0], request.mask, reporter)]
            return engine.segment(request.volume, request.jobs, request.zoomIn, reporter)
        finally:
            self._running.discard(request)
            if request.volumeGone.is_set():  # removed while its session was being opened: close it now
                engine.forget(request.volume.key)

    def summarize(self, request: SegmentationRequest, results) -> list:
        """The Results table's statistics and confidence of each result (any thread: the worker computes them,
        the GUI thread only fills the table)."""
        return clinical_results.results_statistics(
            [spec.name for _, spec in request.targets], results, request.voxels, request.ijkToRas
        )

    def checkNodes(self, request: SegmentationRequest) -> None:
        """The request's volume and segmentation are still in the scene and the volume's grid is unchanged
        (the user may remove, move or resample them while the model runs)."""
        volume, segmentation = request.volumeNode, request.segmentationNode
        if volume.GetScene() is None or segmentation.GetScene() is None:
            raise InputError(
                f"'{volume.GetName() if volume.GetScene() is None else segmentation.GetName()}' was "
                "removed while SegVol was running: nothing was written"
            )
        image = volume.GetImageData()
        if (
            image is None
            or tuple(image.GetDimensions())[::-1] != request.voxels.shape
            or not np.array_equal(bridge.world_ijk_to_ras(volume), request.ijkToRas)
        ):
            raise InputError(
                f"volume '{volume.GetName()}' was moved or resampled while SegVol was running: "
                "nothing was written, segment again"
            )

    def apply(
        self, request: SegmentationRequest, results, editorNode=None, saveStateForUndo=None, statistics=None
    ) -> list[str]:
        """Write the results as segments of the request's segmentation, one undo step (GUI thread), their
        confidence as segment tags; returns the segment IDs (their statistics, from `summarize` or computed
        here: `self.lastStatistics`)."""
        self.checkNodes(request)
        writer = segments.SegmentWriter(request.segmentationNode, request.volumeNode, editorNode, saveStateForUndo)
        try:
            segmentIDs = writer.write([(spec, result.mask) for (_, spec), result in zip(request.targets, results)])
        finally:
            writer.close()
        self.lastNotes = writer.notes
        if statistics is None:
            statistics = self.summarize(request, results)
        self.lastStatistics = clinical_results.show_statistics(request.segmentationNode, segmentIDs, statistics)
        for segmentID, (target, _spec) in zip(segmentIDs, request.targets):
            key = (request.segmentationNode.GetID(), segmentID)
            segments.tag_made_by_segvol(request.segmentationNode, segmentID, target)
            self._writtenAt[key] = segments.segment_stamp(request.segmentationNode, segmentID)  # later edits show
            if request.mask is not None:
                self._madeFromBox[key] = target.box
            elif target.box is not None or target.text is not None:
                self._madeFromBox.pop(key, None)
        return segmentIDs

    # --- clinical export ---

    def prepareDicomSeg(self, volumeNode, segmentationNode, segmentIDs=None, fileForInstance=None):
        """What a DICOM SEG of the segments (default: all) needs from the scene (GUI thread): the volume's DICOM
        files (an InputError naming Slicer's route when it was not loaded from the DICOM database)."""
        clinical_results.check_dicom_place(volumeNode)
        files = clinical_results.dicom_files(volumeNode, fileForInstance)
        if segmentIDs is None:
            segmentIDs = list(segmentationNode.GetSegmentation().GetSegmentIDs())
        if not segmentIDs:
            raise InputError(f"'{segmentationNode.GetName()}' has no segment to export")
        segments = clinical_results.export_segments(segmentationNode, segmentIDs, volumeNode)
        return files, bridge.world_ijk_to_ras(volumeNode), segments

    def writeDicomSeg(self, prepared, path, weights=None) -> None:
        """Write the prepared DICOM SEG (any thread)."""
        from SegVolSlicerLib.clinical.dicom_seg import SegAlgorithm, weights_identity, write_dicom_seg

        files, ijkToRas, segments = prepared
        write_dicom_seg(path, files, ijkToRas, segments, SegAlgorithm(weights_identity(weights)))

    def process(
        self,
        volumeNode,
        segmentationNode,
        names="",
        pointNodes=(),
        roiNode=None,
        refineSegmentID=None,
        zoomIn=True,
        weights=None,
        device="auto",
        editorNode=None,
        saveStateForUndo=None,
        corrections=CORRECTIONS[0],
    ):
        """Prepare, run and apply in the calling thread; returns (segment IDs, warnings). Without a segmentation
        node the results go to a new one named "<volume> SegVol"."""
        request = self.prepare(
            volumeNode, segmentationNode, names, pointNodes, roiNode, refineSegmentID, zoomIn, corrections
        )
        reporter = worker.QueueReporter()
        results = self.run(request, reporter, weights, device)
        segmentIDs = self.apply(request, results, editorNode, saveStateForUndo)
        notices = [event.message for event in reporter.drain() if isinstance(event, worker.Notice)]
        return segmentIDs, notices + [warning for result in results for warning in result.warnings]


#
# Widget (Qt, Slicer application only)
#


class SegVolSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires the panel's sections (SegVolSlicerLib.slicer): prompt tools, Run on, the jobs loop, the Segment
    Editor's history and the Results section; it only collects input (in the parameter node), starts runs and
    writes their results."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._selectResult = False  # select the run's new segment (so that the next clicks refine it)

    # --- set-up and teardown ---

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SegVolSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SegVolSlicerLogic()
        self.jobs = jobs.Jobs(self._showProgress, self._runDone)
        self.installer = installs.Installer(self.jobs, self._showStatus, self._showError, self._updateGUI)
        self.runOn = run_on.RunOn(self.ui, self.logic, self.jobs)
        self.runOn.setup()
        self.prompts = prompt_tools.PromptTools(self.ui, lambda: self._parameterNode, lambda: self.parent.isEntered)
        self.prompts.setup(self._autoRun)
        self.history = editor.EditorHistory()
        self.results = results_section.ResultsSection(
            self.layout,
            self.logic,
            self.jobs,
            self.installer,
            lambda: self._parameterNode,
            self.runOn.weights,
            self._showStatus,
            self._showError,
        )
        self.results.setup(DICOM_REQUIREMENTS_FILE)
        self.campaign = campaign_section.CampaignSection(
            self.layout,
            self.jobs,
            lambda: self._parameterNode,
            self.runOn.weights,
            lambda: self.runSegmentation(interactive=True),
            self.results.show_statistics,
            self._showStatus,
            self._showError,
        )
        self.campaign.setup()
        self.ui.targetSegmentSelector.segmentationNodeSelectorVisible = False
        self.ui.targetSegmentSelector.noneEnabled = True  # "None": the next prompts make a new segment

        # Closing Slicer: qSlicerMainWindow::closeEvent calls exit() (selectModule("")), then the main window
        # goes; aboutToQuit and cleanup() come only once the loop below has returned: end the jobs now.
        self._onLastWindowClosed = self.onLastWindowClosed  # one object: PythonQt disconnects what it connected
        slicer.app.connect("lastWindowClosed()", self._onLastWindowClosed)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAboutToBeRemovedEvent, self.onNodeAboutToBeRemoved)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.clearPromptsButton.connect("clicked(bool)", self.onClearPrompts)
        self.ui.newSegmentButton.connect("clicked(bool)", self.onNewSegment)
        self.ui.refineSegmentButton.connect("clicked(bool)", self.onRefineSegment)
        self.ui.undoButton.connect("clicked(bool)", lambda: self._undo(redo=False))
        self.ui.redoButton.connect("clicked(bool)", lambda: self._undo(redo=True))
        self.initializeParameterNode()
        if self.parent.isEntered:  # Reload while the panel is shown: enter() is not called again
            self.prompts.install_shortcuts()

    def cleanup(self):
        """Module unload, Reload and application exit: stop everything at once and let the model go."""
        slicer.app.disconnect("lastWindowClosed()", self._onLastWindowClosed)
        self.jobs.abandon()
        self.campaign.cleanup()
        self.prompts.cleanup()
        self.removeObservers()
        self.logic.release()

    def enter(self):
        self.initializeParameterNode()
        self.prompts.install_shortcuts()

    def exit(self):
        self.prompts.remove_shortcuts()
        self.prompts.stop_placing()
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUI)

    def onLastWindowClosed(self):
        """The application is closing: the run and the side jobs end at once, in the background."""
        self.prompts.auto_timer.stop()
        self.jobs.abandon()

    def onSceneStartClose(self, caller, event):
        self.prompts.auto_timer.stop()
        self.jobs.abandon()  # its nodes are about to go: the results are dropped, the loop ends now
        self.ui.progressBar.hide()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        self.logic.forgetRemovedVolumes(slicer.mrmlScene)
        if self.parent.isEntered:
            self.initializeParameterNode()

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeAboutToBeRemoved(self, caller, event, node):
        if node.IsA("vtkMRMLVolumeNode"):
            self.logic.forgetVolume(node.GetID())
        elif node.IsA("vtkMRMLSegmentationNode"):
            self.logic.forgetSegmentation(node.GetID())
        elif bridge.node_role(node) is not None and self.parent.isEntered:
            # Placing must keep working: a fresh prompt node once the removal is over.
            qt.QTimer.singleShot(0, self._createMissingPromptNodes)

    # --- parameter node ---

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = bridge.first_ct_volume(slicer.mrmlScene)
        self._createMissingPromptNodes()

    def _createMissingPromptNodes(self):
        node = self._parameterNode
        if not node:
            return
        for attribute, role in (
            ("positivePoints", bridge.POSITIVE_ROLE),
            ("negativePoints", bridge.NEGATIVE_ROLE),
            ("boxROI", bridge.BOX_ROLE),
            ("positiveStroke", bridge.POSITIVE_STROKE_ROLE),
            ("negativeStroke", bridge.NEGATIVE_STROKE_ROLE),
        ):
            if not getattr(node, attribute):
                setattr(node, attribute, bridge.create_prompt_node(slicer.mrmlScene, role))

    def setParameterNode(self, parameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUI)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUI)
        self._updateGUI()

    def _updateGUI(self, caller=None, event=None):
        node = self._parameterNode
        running, installing = self.jobs.running, self.installer.installing
        ready = bool(node and node.inputVolume) and not installing
        self.ui.applyButton.text = _("Cancel") if running else _("Segment")
        self.ui.applyButton.enabled = running or ready
        if running:
            self.ui.applyButton.toolTip = _("Stop the running segmentation")
        elif installing:
            self.ui.applyButton.toolTip = _("SegVol's Python packages are being installed")
        else:
            self.ui.applyButton.toolTip = (
                _("Segment the input volume with the prompts above") if ready else _("Select an input volume")
            )
        if not (running or installing):
            self.ui.progressBar.hide()
        self.results.update()
        if not node:
            return
        for widget, shown in (
            (self.ui.positivePlaceWidget, node.positivePoints),
            (self.ui.negativePlaceWidget, node.negativePoints),
            (self.ui.boxPlaceWidget, node.boxROI),
            (self.ui.positiveStrokePlaceWidget, node.positiveStroke),
            (self.ui.negativeStrokePlaceWidget, node.negativeStroke),
            (self.ui.targetSegmentSelector, node.outputSegmentation),
        ):
            if widget.currentNode() != shown:  # re-setting would reset the widget's state (segment choice)
                widget.setCurrentNode(shown)
        if node.inputVolume:
            self.ui.outputSegmentationSelector.baseName = _("{volume_name} SegVol").format(
                volume_name=node.inputVolume.GetName()
            )
        self.prompts.observe(self._promptNodes())

    # --- prompts ---

    def _promptNodes(self):
        node = self._parameterNode
        return [node.positivePoints, node.negativePoints, node.boxROI, node.positiveStroke, node.negativeStroke]

    def _autoRun(self):
        if self.installer.installing:
            return
        if self.jobs.running:
            self.jobs.rerun_pending = True
        else:
            self.runSegmentation(interactive=False)

    def onClearPrompts(self):
        self.prompts.clear(self._promptNodes())
        self._selectResult = False  # a run still going belongs to the previous structure

    def onRefineSegment(self):
        """Refine the target segment (made elsewhere): SegVol segments it again from prompts derived from it."""
        self.runSegmentation(interactive=True, fromSegment=True)

    def onNewSegment(self):
        """Start a new structure: the next clicks make a new segment."""
        self.onClearPrompts()
        self.ui.targetSegmentSelector.setCurrentSegmentID("")

    # --- running ---

    def onApplyButton(self):
        if self.jobs.running:
            # The loop ends now; the worker stops at its next cancel check (a download chunk, the end of the
            # volume's preparation, the next model pass) and its results are dropped.
            self.jobs.cancel_run()
            self._updateGUI()
            self.ui.statusLabel.text = _("Cancelled: no segment was changed.")
            return
        self.runSegmentation(interactive=True)

    def runSegmentation(self, interactive=True, fromSegment=False):
        """Start a run on the worker thread. Not interactive (auto-update): problems go to the status line only.
        fromSegment: refine the target segment from prompts derived from it (Refine existing segment)."""
        node = self._parameterNode
        if not node or self.installer.installing:
            return
        if not self.runOn.dependencies_ready:
            self.installer.ensure(
                CLIENT_REQUIREMENTS_FILE if self.runOn.on_server() else REQUIREMENTS_FILE,
                needs_torch=not self.runOn.on_server(),
                interactive=interactive,
                then=lambda: self._dependenciesInstalled(interactive, fromSegment),
            )
            return
        try:
            self.runOn.use_engine()
        except SegVolError as error:
            self._showError(error, interactive)
            return
        refineSegmentID = self.ui.targetSegmentSelector.currentSegmentID() if node.outputSegmentation else None
        try:
            if fromSegment:
                request = self.logic.prepareFromSegment(node.inputVolume, node.outputSegmentation, refineSegmentID)
            else:
                request = self.logic.prepare(
                    node.inputVolume,
                    node.outputSegmentation,
                    node.targetNames,
                    [
                        node.positivePoints,
                        node.negativePoints,
                        node.positiveStroke,
                        node.negativeStroke,
                        *bridge.finished_strokes(slicer.mrmlScene),
                    ],
                    node.boxROI,
                    refineSegmentID or None,
                    node.zoomIn,
                    node.corrections,
                )
        except SegVolError as error:
            self._showError(error, interactive)
            return
        node.outputSegmentation = request.segmentationNode  # a new one when none was selected
        weights, device = self.runOn.weights(), node.device
        self._selectResult = True
        logic = self.logic

        def work(reporter):  # the worker thread: the model, and the Results table's numbers
            results = logic.run(request, reporter, weights, device)
            return results, logic.summarize(request, results)

        self.jobs.start_run(work, request, interactive)
        self.ui.progressBar.setRange(0, 0)
        self.ui.progressBar.show()
        self.ui.statusLabel.text = _("Segmenting {count} target(s)...").format(count=len(request.targets))
        self._updateGUI()
        self.jobs.serve()  # returns at once when started by an event handled in the loop, which serves it

    def _dependenciesInstalled(self, interactive, fromSegment):
        self.runOn.dependencies_ready = True
        self.runSegmentation(interactive, fromSegment)

    def _runDone(self, job, request, interactive):
        self.ui.progressBar.hide()
        self.runOn.show_weights_location()  # a first run may have downloaded them
        try:
            results, statistics = job.outcome()
            self._finish(request, results, statistics, interactive)
        except Cancelled:
            self.ui.statusLabel.text = _("Cancelled: no segment was changed.")
        except SegVolError as error:
            self._showError(error, interactive)
        except Exception as error:  # a bug, not a user mistake: full details for the report
            logging.error(traceback.format_exc())
            slicer.util.errorDisplay(
                _("Segmentation failed: {error}").format(error=error), detailedText=traceback.format_exc()
            )
        self._updateGUI()
        if self.jobs.rerun_pending:
            self.jobs.rerun_pending = False
            self._autoRun()

    def _showProgress(self, event):
        if isinstance(event, worker.Notice):
            self.ui.statusLabel.text = event.message
            slicer.util.showStatusMessage(event.message, 5000)
        elif event.stage == "target":
            request = self.jobs.request
            if request is not None and event.total > 1:
                self.ui.statusLabel.text = _("Segmenting {name} ({index} of {count})...").format(
                    name=request.targets[event.done][0].name, index=event.done + 1, count=event.total
                )
        else:
            title = STAGE_TITLES.get(event.stage, event.stage)
            self.ui.progressBar.setRange(0, max(event.total, 1))
            self.ui.progressBar.setValue(event.done)
            self.ui.progressBar.setFormat(
                f"{title} {event.done} of {event.total}" if event.stage in ("zoom-in", "correction") else f"{title} %p%"
            )

    def _finish(self, request, results, statistics, interactive):
        self.logic.checkNodes(request)  # before the Segment Editor is pointed at the nodes
        shownEditor = self.history.point_at(request.segmentationNode, request.volumeNode, interactive)
        editorNode = shownEditor.mrmlSegmentEditorNode() if self._parameterNode.useSegmentEditorSettings else None
        onEditor = shownEditor.segmentationNode() == request.segmentationNode
        undoOwner = shownEditor.saveStateForUndo if onEditor else None
        with self.campaign.ai_step(request, results):  # a step of the open case's record
            segmentIDs = self.logic.apply(request, results, editorNode, undoOwner, statistics)
        segmentation = request.segmentationNode
        segmentation.GetDisplayNode().SetVisibility(True)
        if (
            self._selectResult
            and len(segmentIDs) == 1
            and request.targets[0][0].text is None
            and self._parameterNode.outputSegmentation == segmentation
        ):
            self.ui.targetSegmentSelector.setCurrentSegmentID(segmentIDs[0])  # next clicks refine this one
        self.results.show_statistics(self.logic.lastStatistics)
        warnings = [w for result in results for w in result.warnings] + self.logic.lastNotes
        names = ", ".join(segmentation.GetSegmentation().GetSegment(s).GetName() for s in segmentIDs)
        if not onEditor:
            warnings.append(editor.NOT_UNDOABLE.format(name=shownEditor.segmentationNode().GetName()))
        self.ui.statusLabel.text = "\n".join([_("Done: {names}.").format(names=names), *warnings])

    def _undo(self, redo=False):
        node = self._parameterNode
        why = self.history.undo(node.outputSegmentation, redo) if node else None
        if why:
            self.ui.statusLabel.text = why

    def _showStatus(self, text, busy=False):
        self.ui.statusLabel.text = text
        if busy:
            self.ui.progressBar.setRange(0, 0)
            self.ui.progressBar.show()

    def _showError(self, error, interactive):
        self.ui.statusLabel.text = str(error)
        if interactive:
            slicer.util.errorDisplay(str(error))


#
# Self-test
#


class SegVolSlicerTest(ScriptedLoadableModuleTest):
    """Runs the checks pytest runs (SegVolSlicerLib.slicer.checks), here against the real application."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for check in checks.BRIDGE_CHECKS:
            self._run(check)
        for check in checks.LOGIC_CHECKS:
            self._run(check, SegVolSlicerLogic())
        if dependencies.unsatisfied(
            [dependencies.TORCH_REQUIREMENT, *dependencies.requirement_lines(REQUIREMENTS_FILE)]
        ):
            self.delayDisplay("SegVol's Python packages are not installed: engine checks skipped")
            return
        self._run(
            checks.check_logic_end_to_end,
            SegVolSlicerLogic(),
            checks.synthetic_model(slicer.app.temporaryPath),
        )
        self.delayDisplay("Test passed")

    def _run(self, check, *args):
        self.setUp()
        self.delayDisplay(check.__doc__.splitlines()[0])
        check(*args)
