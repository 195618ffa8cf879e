"""SegVol in 3D Slicer: segment CT structures from anatomy names, clicks and a box.

Module, widget, logic and self-test on Slicer's scripted-module template. The widget only collects input (in a
parameter node) and shows progress; SegVolSlicerLogic is Qt-free; everything it calls lives in SegVolSlicerLib.
pytest runs this file against slicer-core with stand-ins for the application-only modules
(Testing/Python/slicer_core_env.py).
"""

import logging
import os
import traceback
from dataclasses import dataclass
from typing import Annotated

import ctk
import numpy as np
import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
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

from SegVolSlicerLib import runtime, vocabulary
from SegVolSlicerLib.engine import EngineHost, ModelChoice, SessionOptions, VolumeInput
from SegVolSlicerLib.errors import Cancelled, InputError, SegVolError
from SegVolSlicerLib.reporting import NO_REPORT, Reporter
from SegVolSlicerLib.slicer import bridge, checks, clinical_results, dependencies, worker

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
REQUIREMENTS_FILE = os.path.join(MODULE_DIR, "Resources", "requirements.txt")
CLIENT_REQUIREMENTS_FILE = os.path.join(MODULE_DIR, "Resources", "requirements-client.txt")
DICOM_REQUIREMENTS_FILE = os.path.join(MODULE_DIR, "Resources", "requirements-dicom.txt")  # Export DICOM SEG
# Application settings, not scene content: a scene shared with others never carries the server's key.
WEIGHTS_SETTING = "SegVolSlicer/Weights"
RUN_ON_SETTING, SERVER_URL_SETTING, SERVER_KEY_SETTING = (
    "SegVolSlicer/RunOn",
    "SegVolSlicer/ServerURL",
    "SegVolSlicer/ServerAPIKey",
)
RUN_ON = ("This computer", "A SegVol server")  # runOnComboBox's items, in index order
# During a run the GUI thread waits on the worker this long between handling Qt events. Slicer's PythonQt keeps
# the GIL on the GUI thread while Qt runs (no PythonQt thread support): waiting on an Event is what lets the
# worker run; Qt events are still handled several times within 100 ms.
EVENT_WAIT_S = 0.05
STAGE_TITLES = {
    "download": "Downloading weights",
    "load": "Loading model",
    "preprocess": "Preparing volume",
    "zoom-out": "Zoom-out",
    "zoom-in": "Zoom-in window",
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
    zoomIn - SegVol's zoom-in refinement; autoUpdate - rerun when a prompt changes;
    device - where the model runs; useSegmentEditorSettings - honour the Segment Editor's overwrite/mask options.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    targetNames: str = ""
    positivePoints: vtkMRMLMarkupsFiducialNode
    negativePoints: vtkMRMLMarkupsFiducialNode
    boxROI: vtkMRMLMarkupsROINode
    zoomIn: bool = True
    autoUpdate: bool = False
    device: Annotated[str, Choice(list(runtime.DEVICES))] = "auto"
    useSegmentEditorSettings: bool = False


#
# Logic (Qt-free)
#


@dataclass
class SegmentationRequest:
    """Everything a run needs, read from the scene on the GUI thread. The worker thread reads only the
    engine's volume (arrays, the node ID, plain values) and the targets; the nodes are where `apply` writes the
    results, back on the GUI thread."""

    volumeNode: vtkMRMLScalarVolumeNode
    segmentationNode: vtkMRMLSegmentationNode
    volume: VolumeInput  # key: the volume node ID; signature: (voxels' modification time, world IJK-to-RAS)
    targets: list  # [(prompts.Target, bridge.SegmentSpec)]
    zoomIn: bool

    @property
    def voxels(self):
        return self.volume.voxels

    @property
    def ijkToRas(self):
        return self.volume.ijk_to_ras


class SegVolSlicerLogic(ScriptedLoadableModuleLogic):
    """Prepare (GUI thread) -> run (any thread) -> apply (GUI thread); `process` does all three in a row.

    The engine host (SegVolSlicerLib.engine) keeps the loaded model and one inference session per volume (its
    embedding caches make a new click cost a decoder pass), dropped when the volume changes or is removed;
    only the 2 most recently used are kept (each holds a float copy of its volume and up to 768 MB of
    embeddings: with 0.7 GB of weights a GPU stays under 4 GB).
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.engine = self._newEngine()  # or a client.RemoteEngine: the same face over a SegVol server
        self._server = None  # (url, key) while the engine is a server's
        self.lastStatistics = []  # clinical.statistics.SegmentStatistics of the segments the last apply wrote

    @staticmethod
    def _newEngine(model=None):
        return EngineHost(
            model=model,
            max_sessions=2,
            memory_budget_mb=2 * 768 + 1024,
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
        old, self.engine, self._server = self.engine, engine, None
        old.close()  # a server's sessions end; a local model's memory is freed

    def forgetVolume(self, volumeNodeID: str) -> None:
        """Drop the session of a volume (removed from the scene, or its voxels changed)."""
        self.engine.forget(volumeNodeID)

    def forgetRemovedVolumes(self, scene) -> None:
        """Drop the sessions of volumes no longer in `scene` (after a scene close, node IDs are reused)."""
        self.engine.keep_only(key for key in self.engine.session_keys() if scene.GetNodeByID(key) is not None)

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
    ) -> SegmentationRequest:
        """Read the volume and prompts from the scene (GUI thread). Raises InputError for unusable input.

        Without a segmentation node, a new one is made (`request.segmentationNode`) once the input is usable.
        """
        voxels, ijkToRas = bridge.read_volume(volumeNode)
        volume = VolumeInput(
            volumeNode.GetID(), voxels, ijkToRas, signature=(volumeNode.GetImageData().GetMTime(), ijkToRas.tobytes())
        )
        self.forgetRemovedVolumes(volumeNode.GetScene())
        self.engine.forget_if_changed(volume.key, volume.signature)
        points, box = bridge.read_prompts(pointNodes, roiNode, ijkToRas, voxels.shape)
        targets = bridge.plan_targets(bridge.split_names(names), points, box, segmentationNode, refineSegmentID)
        if segmentationNode is None:
            segmentationNode = bridge.create_segmentation_node(volumeNode)
        bridge.check_labelmap_source(segmentationNode)  # now, not after the model ran
        return SegmentationRequest(volumeNode, segmentationNode, volume, targets, bool(zoomIn))

    def run(self, request: SegmentationRequest, reporter: Reporter = NO_REPORT, weights=None, device="auto"):
        """Segment every target (any thread: no scene access). A GPU out of memory falls back to the CPU."""
        self.engine.select(ModelChoice(weights or None, device))
        return self.engine.segment(request.volume, [target for target, _ in request.targets], request.zoomIn, reporter)

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

    def apply(self, request: SegmentationRequest, results, editorNode=None, saveStateForUndo=None) -> list[str]:
        """Write the results as segments of the request's segmentation, one undo step (GUI thread), their
        confidence as segment tags; returns the segment IDs (their statistics: `self.lastStatistics`)."""
        self.checkNodes(request)
        writer = bridge.SegmentWriter(request.segmentationNode, request.volumeNode, editorNode, saveStateForUndo)
        try:
            segmentIDs = writer.write([(spec, result.mask) for (_, spec), result in zip(request.targets, results)])
        finally:
            writer.close()
        self.lastStatistics = clinical_results.results_statistics(
            request.segmentationNode, segmentIDs, results, request.voxels, request.ijkToRas
        )
        return segmentIDs

    # --- clinical export ---

    def prepareDicomSeg(self, volumeNode, segmentationNode, segmentIDs=None, fileForInstance=None):
        """What a DICOM SEG of the segments (default: all) needs from the scene (GUI thread): the volume's DICOM
        files (an InputError naming Slicer's route when it was not loaded from the DICOM database)."""
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
    ):
        """Prepare, run and apply in the calling thread; returns (segment IDs, warnings). Without a segmentation
        node the results go to a new one named "<volume> SegVol"."""
        request = self.prepare(volumeNode, segmentationNode, names, pointNodes, roiNode, refineSegmentID, zoomIn)
        reporter = worker.QueueReporter()
        results = self.run(request, reporter, weights, device)
        segmentIDs = self.apply(request, results, editorNode, saveStateForUndo)
        notices = [event.message for event in reporter.drain() if isinstance(event, worker.Notice)]
        return segmentIDs, notices + [warning for result in results for warning in result.warnings]


#
# Widget (Qt, Slicer application only)
#


class SegVolSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._request = None  # the running job's request; None: its results are to be dropped (scene closed)
        self._interactive = True  # the running job was started by the user (errors in a dialog), not auto-update
        self._rerunPending = False
        self._waitingForJobs = False
        self._selectResult = False  # select the run's new segment (so that the next clicks refine it)
        self._dependenciesReady = False
        self._shortcuts = []
        self._observedPromptNodes = []

    # --- set-up and teardown ---

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SegVolSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SegVolSlicerLogic()

        for placeWidget, multiple in (
            (self.ui.positivePlaceWidget, True),
            (self.ui.negativePlaceWidget, True),
            (self.ui.boxPlaceWidget, False),
        ):
            placeWidget.buttonsVisible = False
            placeWidget.placeButton().show()
            placeWidget.placeMultipleMarkups = (
                slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups
                if multiple
                else slicer.qSlicerMarkupsPlaceWidget.ForcePlaceSingleMarkup
            )
        self.ui.boxPlaceWidget.connect("activeMarkupsPlaceModeChanged(bool)", self._onBoxPlaceModeChanged)
        self.ui.targetSegmentSelector.segmentationNodeSelectorVisible = False
        self.ui.targetSegmentSelector.noneEnabled = True  # "None": the next prompts make a new segment
        self._setUpNameCompletion()

        self.ui.weightsPathLineEdit.filters = (
            ctk.ctkPathLineEdit.Files | ctk.ctkPathLineEdit.Dirs | ctk.ctkPathLineEdit.Readable
        )
        self.ui.weightsPathLineEdit.nameFilters = ["SegVol weights (*.pth *.bin *.safetensors)", "All files (*)"]
        self.ui.weightsPathLineEdit.currentPath = qt.QSettings().value(WEIGHTS_SETTING) or ""
        self.ui.weightsPathLineEdit.connect(
            "currentPathChanged(QString)", lambda path: qt.QSettings().setValue(WEIGHTS_SETTING, path)
        )
        self._setUpRunOn()
        self._setUpResultsSection()

        self._autoTimer = qt.QTimer()
        self._autoTimer.setSingleShot(True)
        self._autoTimer.setInterval(400)  # one run after a burst of prompt edits
        self._autoTimer.connect("timeout()", self._autoRun)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAboutToBeRemovedEvent, self.onNodeAboutToBeRemoved)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.clearPromptsButton.connect("clicked(bool)", self.onClearPrompts)
        self.ui.newSegmentButton.connect("clicked(bool)", self.onNewSegment)
        self.ui.undoButton.connect("clicked(bool)", lambda: self._undo(redo=False))
        self.ui.redoButton.connect("clicked(bool)", lambda: self._undo(redo=True))
        self.ui.targetNamesEdit.connect("returnPressed()", self._onPromptChanged)
        self.initializeParameterNode()

    def cleanup(self):
        self._autoTimer.stop()
        if self._job is not None:
            self._job.cancel()
        self._removeShortcuts()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()
        self._installShortcuts()

    def exit(self):
        self._autoTimer.stop()
        self._removeShortcuts()
        for placeWidget in (self.ui.positivePlaceWidget, self.ui.negativePlaceWidget, self.ui.boxPlaceWidget):
            placeWidget.setPlaceModeEnabled(False)
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUI)

    def onSceneStartClose(self, caller, event):
        self._autoTimer.stop()
        self._rerunPending = False
        if self._job is not None:
            self._job.cancel()
            self._request = None  # its nodes are about to go: the results are dropped
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        self.logic.forgetRemovedVolumes(slicer.mrmlScene)
        if self.parent.isEntered:
            self.initializeParameterNode()

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeAboutToBeRemoved(self, caller, event, node):
        if node.IsA("vtkMRMLVolumeNode"):
            self.logic.forgetVolume(node.GetID())
        elif bridge.node_role(node) is not None and self.parent.isEntered:
            # Placing must keep working: a fresh prompt node once the removal is over.
            qt.QTimer.singleShot(0, self._createMissingPromptNodes)

    # --- parameter node ---

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        self._createMissingPromptNodes()

    def _createMissingPromptNodes(self):
        node = self._parameterNode
        if not node:
            return
        for attribute, role in (
            ("positivePoints", bridge.POSITIVE_ROLE),
            ("negativePoints", bridge.NEGATIVE_ROLE),
            ("boxROI", bridge.BOX_ROLE),
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
        running = self._job is not None
        ready = bool(node and node.inputVolume)
        self.ui.applyButton.text = _("Cancel") if running else _("Segment")
        self.ui.applyButton.enabled = running or ready
        self.ui.applyButton.toolTip = (
            _("Stop the running segmentation")
            if running
            else (_("Segment the input volume with the prompts above") if ready else _("Select an input volume"))
        )
        if not node:
            return
        for widget, shown in (
            (self.ui.positivePlaceWidget, node.positivePoints),
            (self.ui.negativePlaceWidget, node.negativePoints),
            (self.ui.boxPlaceWidget, node.boxROI),
            (self.ui.targetSegmentSelector, node.outputSegmentation),
        ):
            if widget.currentNode() != shown:  # re-setting would reset the widget's state (segment choice)
                widget.setCurrentNode(shown)
        if node.inputVolume:
            self.ui.outputSegmentationSelector.baseName = _("{volume_name} SegVol").format(
                volume_name=node.inputVolume.GetName()
            )
        self._observePromptNodes([node.positivePoints, node.negativePoints, node.boxROI])

    def _observePromptNodes(self, nodes):
        nodes = [n for n in nodes if n is not None]
        if nodes == self._observedPromptNodes:
            return
        for old in self._observedPromptNodes:
            self.removeObserver(old, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self._onPointDefined)
            for event in (
                slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent,
                slicer.vtkMRMLMarkupsNode.PointRemovedEvent,
            ):
                self.removeObserver(old, event, self._onPromptChanged)
        for new in nodes:
            self.addObserver(new, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self._onPointDefined)
            for event in (
                slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent,
                slicer.vtkMRMLMarkupsNode.PointRemovedEvent,
            ):
                self.addObserver(new, event, self._onPromptChanged)
        self._observedPromptNodes = nodes

    # --- prompts ---

    def _setUpNameCompletion(self):
        """Complete the name being typed (the text after the last comma) from SegVol's training names."""
        self._completer = qt.QCompleter(list(vocabulary.category_names()))
        self._completer.setCaseSensitivity(qt.Qt.CaseInsensitive)
        self._completer.setFilterMode(qt.Qt.MatchContains)
        self._completer.setWidget(self.ui.targetNamesEdit)
        self._completer.connect("activated(QString)", self._insertCompletion)
        self.ui.targetNamesEdit.connect("textEdited(QString)", self._completeLastName)

    def _completeLastName(self, text):
        prefix = text.split(",")[-1].strip()
        if len(prefix) < 2:
            self._completer.popup().hide()
            return
        self._completer.setCompletionPrefix(prefix)
        self._completer.complete()

    def _insertCompletion(self, name):
        typed = [n.strip() for n in self.ui.targetNamesEdit.text.split(",")[:-1] if n.strip()]
        self.ui.targetNamesEdit.text = ", ".join(typed + [name])

    def _onPointDefined(self, caller, event):
        bridge.tag_point_descriptions(caller)
        self._onPromptChanged()

    def _onPromptChanged(self, caller=None, event=None):
        # Only while the panel is shown: prompts dragged in another module must not rewrite segments unseen.
        if self.parent.isEntered and self._parameterNode and self._parameterNode.autoUpdate:
            self._autoTimer.start()

    def _autoRun(self):
        if self._job is not None:
            self._rerunPending = True
        else:
            self.runSegmentation(interactive=False)

    def onClearPrompts(self):
        node = self._parameterNode
        bridge.clear_prompts([node.positivePoints, node.negativePoints, node.boxROI])
        self._autoTimer.stop()  # clearing starts over; it is not a prompt to run
        self._selectResult = False  # a run still going belongs to the previous structure

    def onNewSegment(self):
        """Start a new structure: the next clicks make a new segment."""
        self.onClearPrompts()
        self.ui.targetSegmentSelector.setCurrentSegmentID("")

    def _installShortcuts(self):
        self._removeShortcuts()
        for key, placeWidget in (
            ("P", self.ui.positivePlaceWidget),
            ("N", self.ui.negativePlaceWidget),
            ("Shift+B", self.ui.boxPlaceWidget),
        ):  # plain "b" steps slices in Slicer
            shortcut = qt.QShortcut(qt.QKeySequence(key), slicer.util.mainWindow())
            shortcut.connect("activated()", lambda w=placeWidget: self._togglePlaceMode(w))
            self._shortcuts.append(shortcut)

    def _togglePlaceMode(self, placeWidget):
        placing = not placeWidget.placeModeEnabled
        if placing and placeWidget is self.ui.boxPlaceWidget:
            self._onBoxPlaceModeChanged(True)
        placeWidget.setPlaceModeEnabled(placing)

    def _onBoxPlaceModeChanged(self, placing):
        """Placing a box while one is placed draws it anew in the same node. Placing into a full ROI node would
        make Slicer create a new ROI node, without SegVol's role tag: the user's new box would do nothing."""
        box = self._parameterNode.boxROI if self._parameterNode else None
        if placing and box is not None and box.GetNumberOfControlPoints() > 0:
            box.RemoveAllControlPoints()

    def _removeShortcuts(self):
        for shortcut in self._shortcuts:
            shortcut.setParent(None)
        self._shortcuts = []

    # --- where SegVol runs ---

    def _setUpRunOn(self):
        settings = qt.QSettings()
        self.ui.runOnComboBox.addItems(list(RUN_ON))
        self.ui.runOnComboBox.currentIndex = 1 if settings.value(RUN_ON_SETTING) == "server" else 0
        self.ui.serverUrlEdit.text = settings.value(SERVER_URL_SETTING) or ""
        self.ui.serverKeyEdit.text = settings.value(SERVER_KEY_SETTING) or ""
        self.ui.runOnComboBox.connect("currentIndexChanged(int)", self._onRunOnChanged)
        self.ui.serverUrlEdit.connect(
            "editingFinished()", lambda: qt.QSettings().setValue(SERVER_URL_SETTING, self.ui.serverUrlEdit.text.strip())
        )
        self.ui.serverKeyEdit.connect(
            "editingFinished()", lambda: qt.QSettings().setValue(SERVER_KEY_SETTING, self.ui.serverKeyEdit.text.strip())
        )
        self._showRunOn()

    def _runsOnServer(self) -> bool:
        return self.ui.runOnComboBox.currentIndex == 1

    def _onRunOnChanged(self, index):
        qt.QSettings().setValue(RUN_ON_SETTING, "server" if index == 1 else "local")
        self._dependenciesReady = False  # the other mode needs other packages (torch, or only the client's)
        self._showRunOn()

    def _showRunOn(self):
        server = self._runsOnServer()
        for widget in (self.ui.serverUrlEdit, self.ui.serverKeyEdit):
            widget.enabled = server
        for widget in (self.ui.deviceComboBox, self.ui.weightsPathLineEdit):
            widget.enabled = not server  # the server's own choice

    # --- running ---

    def onApplyButton(self):
        if self._job is not None:
            self._job.cancel()
            self._rerunPending = False
            self.ui.statusLabel.text = _("Cancelling...")
            return
        self.runSegmentation(interactive=True)

    def runSegmentation(self, interactive=True):
        """Start a run on the worker thread. Not interactive (auto-update): problems go to the status line only."""
        node = self._parameterNode
        if not node:
            return
        server = self._runsOnServer()
        if not self._dependenciesReady:
            problem = dependencies.ensure(
                CLIENT_REQUIREMENTS_FILE if server else REQUIREMENTS_FILE, interactive, needs_torch=not server
            )
            if problem is not None:
                self.ui.statusLabel.text = problem
                return
            self._dependenciesReady = True
        try:
            if server:
                self.logic.useServer(self.ui.serverUrlEdit.text, self.ui.serverKeyEdit.text)
            else:
                self.logic.useThisComputer()
        except SegVolError as error:
            self._showError(error, interactive)
            return
        refineSegmentID = self.ui.targetSegmentSelector.currentSegmentID() if node.outputSegmentation else None
        try:
            request = self.logic.prepare(
                node.inputVolume,
                node.outputSegmentation,
                node.targetNames,
                [node.positivePoints, node.negativePoints],
                node.boxROI,
                refineSegmentID or None,
                node.zoomIn,
            )
        except SegVolError as error:
            self._showError(error, interactive)
            return
        node.outputSegmentation = request.segmentationNode  # a new one when none was selected
        weights, device = self.ui.weightsPathLineEdit.currentPath.strip() or None, node.device
        self._request, self._selectResult, self._interactive = request, True, interactive
        self._job = worker.WorkerJob(lambda reporter: self.logic.run(request, reporter, weights, device)).start()
        self.ui.progressBar.setRange(0, 0)
        self.ui.progressBar.show()
        self.ui.statusLabel.text = _("Segmenting {count} target(s)...").format(count=len(request.targets))
        self._updateGUI()
        if not self._waitingForJobs:  # else started by an event handled in the loop below, which waits for it
            self._waitForJobs()

    def _waitForJobs(self):
        """Handle Qt events until the job, and any rerun it leads to, is done (the Cancel button, the scene and
        the prompts stay live meanwhile)."""
        self._waitingForJobs = True
        try:
            while self._job is not None:
                if not self._job.wait(EVENT_WAIT_S):
                    slicer.app.processEvents()
                for event in self._job.reporter.drain():
                    self._showProgress(event)
                if self._job.finished:
                    self._jobDone()
        finally:
            self._waitingForJobs = False

    def _jobDone(self):
        job, request = self._job, self._request
        self._job = self._request = None
        self.ui.progressBar.hide()
        try:
            results = job.outcome()
            if request is not None:
                self._finish(request, results)
        except Cancelled:
            self.ui.statusLabel.text = _("Cancelled: no segment was changed.")
        except SegVolError as error:
            self._showError(error, self._interactive and request is not None)
        except Exception as error:  # a bug, not a user mistake: full details for the report
            logging.error(traceback.format_exc())
            slicer.util.errorDisplay(
                _("Segmentation failed: {error}").format(error=error), detailedText=traceback.format_exc()
            )
        self._updateGUI()
        if self._rerunPending:
            self._rerunPending = False
            self._autoRun()

    def _showProgress(self, event):
        if isinstance(event, worker.Notice):
            self.ui.statusLabel.text = event.message
            slicer.util.showStatusMessage(event.message, 5000)
        elif event.stage == "target":
            target = self._request.targets[event.done][0] if self._request is not None else None
            if target is not None and event.total > 1:
                self.ui.statusLabel.text = _("Segmenting {name} ({index} of {count})...").format(
                    name=target.name, index=event.done + 1, count=event.total
                )
        else:
            title = STAGE_TITLES.get(event.stage, event.stage)
            self.ui.progressBar.setRange(0, max(event.total, 1))
            self.ui.progressBar.setValue(event.done)
            self.ui.progressBar.setFormat(
                f"{title} {event.done} of {event.total}" if event.stage == "zoom-in" else f"{title} %p%"
            )

    def _finish(self, request, results):
        self.logic.checkNodes(request)  # before the Segment Editor is pointed at the nodes
        editor = self._segmentEditor(request.segmentationNode, request.volumeNode)
        editorNode = editor.mrmlSegmentEditorNode() if self._parameterNode.useSegmentEditorSettings else None
        segmentIDs = self.logic.apply(request, results, editorNode, editor.saveStateForUndo)
        segmentation = request.segmentationNode
        segmentation.GetDisplayNode().SetVisibility(True)
        if (
            self._selectResult
            and len(segmentIDs) == 1
            and request.targets[0][0].text is None
            and self._parameterNode.outputSegmentation == segmentation
        ):
            self.ui.targetSegmentSelector.setCurrentSegmentID(segmentIDs[0])  # next clicks refine this one
        self._showStatistics(self.logic.lastStatistics)
        warnings = [w for result in results for w in result.warnings]
        names = ", ".join(segmentation.GetSegmentation().GetSegment(s).GetName() for s in segmentIDs)
        self.ui.statusLabel.text = "\n".join([_("Done: {names}.").format(names=names), *warnings])

    # --- results: statistics, confidence, DICOM SEG export (a section of its own) ---

    def _setUpResultsSection(self):
        section = ctk.ctkCollapsibleButton()
        section.text = _("Results")
        self.layout.addWidget(section)
        form = qt.QFormLayout(section)
        self.statisticsLabel = qt.QLabel()
        self.statisticsLabel.wordWrap = True
        self.statisticsLabel.toolTip = _(
            "Volume, mean CT intensity and SegVol's confidence of the segments of the last run: the mean "
            "probability inside the segment and the share of voxels near the 0.5 threshold (not a calibrated "
            "probability of being right; low values in red are worth a look)."
        )
        form.addRow(self.statisticsLabel)
        self.dicomSegPathEdit = ctk.ctkPathLineEdit()
        self.dicomSegPathEdit.filters = ctk.ctkPathLineEdit.Files | ctk.ctkPathLineEdit.Writable
        self.dicomSegPathEdit.nameFilters = ["DICOM SEG (*.dcm)"]
        self.dicomSegPathEdit.toolTip = _("Where to write the DICOM SEG of the output segmentation")
        form.addRow(_("DICOM SEG file:"), self.dicomSegPathEdit)
        self.exportDicomSegButton = qt.QPushButton(_("Export DICOM SEG"))
        self.exportDicomSegButton.toolTip = _(
            "Write the output segmentation as a DICOM SEG referencing the input volume's DICOM series (the "
            "volume must have been loaded from Slicer's DICOM database)"
        )
        self.exportDicomSegButton.connect("clicked(bool)", self.onExportDicomSeg)
        form.addRow(self.exportDicomSegButton)

    def _showStatistics(self, statistics):
        self.statisticsLabel.text = clinical_results.statistics_html(statistics) if statistics else ""

    def onExportDicomSeg(self):
        node = self._parameterNode
        path = self.dicomSegPathEdit.currentPath.strip()
        if not node or not node.inputVolume or not node.outputSegmentation:
            self.ui.statusLabel.text = _("Choose the input volume and the output segmentation first.")
            return
        if not path.lower().endswith(".dcm"):
            self.ui.statusLabel.text = _("Give a DICOM SEG file name ending in .dcm.")
            return
        try:
            prepared = self.logic.prepareDicomSeg(node.inputVolume, node.outputSegmentation)
        except SegVolError as error:
            self._showError(error, interactive=True)
            return
        problem = dependencies.ensure(DICOM_REQUIREMENTS_FILE, interactive=True, needs_torch=False)
        if problem is not None:
            self.ui.statusLabel.text = problem
            return
        weights = self.ui.weightsPathLineEdit.currentPath.strip() or None
        job = worker.WorkerJob(lambda reporter: self.logic.writeDicomSeg(prepared, path, weights)).start()
        self.ui.statusLabel.text = _("Writing the DICOM SEG...")
        while not job.wait(EVENT_WAIT_S):  # the GUI stays live while highdicom encodes
            slicer.app.processEvents()
        try:
            job.outcome()
        except SegVolError as error:
            self._showError(error, interactive=True)
            return
        self.ui.statusLabel.text = _("Wrote {path}.").format(path=path)

    def _segmentEditor(self, segmentationNode, volumeNode):
        """The Segment Editor module's editor, on this segmentation: its undo stack holds our steps too."""
        editorModule = slicer.modules.segmenteditor.widgetRepresentation().self()
        editorModule.selectParameterNode()
        editor = editorModule.editor
        if editor.segmentationNode() != segmentationNode:
            editor.setSegmentationNode(segmentationNode)
        if volumeNode is not None and editor.sourceVolumeNode() != volumeNode:
            editor.setSourceVolumeNode(volumeNode)
        return editor

    def _undo(self, redo=False):
        """Undo (or redo) a step of the output segmentation in the Segment Editor's history."""
        node = self._parameterNode
        if not node or not node.outputSegmentation:
            return
        editor = self._segmentEditor(node.outputSegmentation, node.inputVolume)
        if redo:
            editor.redo()
        else:
            editor.undo()

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
        for check in checks.ENGINE_CHECKS:
            self._run(check)
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
