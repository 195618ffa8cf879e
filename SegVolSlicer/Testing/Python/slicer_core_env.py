"""Stand-in for the parts of slicer.app / slicer.modules that slicer.util needs (slicer-core wheel only), and
for the application-only modules (qt, ctk, slicer.ScriptedLoadableModule, ...: slicer_app_standins, installed
on import).

Usage: scene = slicer_core_env.setup(); ...; slicer_core_env.teardown(), or the `slicer_scene` fixture; the
`slicer_module` fixture is SegVolSlicer.py imported as in Slicer. The scene has the singleton nodes the
application has (which scene.Clear() keeps), the Segment Editor's among them.
Never call it inside real Slicer. From the team's verified shim (the shared slicer-testing notes).
"""

import importlib.util
import sys
import tempfile
import types
from pathlib import Path

import pytest
import slicer
import slicer.util  # noqa: F401
import slicer_app_standins
import vtk

slicer_app_standins.install()

_SEG_EXT = (".seg.nrrd", ".seg.nhdr", ".seg.vtm")
_MARKUPS_EXT = (".mrk.json", ".fcsv", ".json")
_VOLUME_EXT = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd", ".hdr", ".img", ".img.gz", ".tif", ".tiff")
_VOLUME_FLAGS = {
    "labelmap": (1, False),
    "center": (2, False),
    "singleFile": (4, True),
    "autoWindowLevel": (8, True),
    "discardOrientation": (16, False),
}  # property: (bit, default)
_ENV = None


class _CoreIOManager:
    def __init__(self, env):
        self._env = env

    def fileType(self, filename):
        name = str(filename).lower()
        for exts, kind in ((_SEG_EXT, "SegmentationFile"), (_MARKUPS_EXT, "MarkupsFile"), (_VOLUME_EXT, "VolumeFile")):
            if name.endswith(exts):
                return kind
        return "NoFile"

    def loadNodes(self, fileType, properties, loadedNodes, userMessages=None):
        env, fileName = self._env, str(properties["fileName"])
        name = properties.get("name") or None
        if fileType == "VolumeFile":
            options = sum(bit for key, (bit, default) in _VOLUME_FLAGS.items() if properties.get(key, default))
            name = name or Path(fileName).name.split(".")[0]
            try:
                node = env.volumes.AddArchetypeVolume(fileName, name, options, None, userMessages)
            except TypeError:  # slicer-core 5.11.x: no userMessages argument
                node = env.volumes.AddArchetypeVolume(fileName, name, options, None)
        elif fileType == "SegmentationFile":
            node = env.segmentations.LoadSegmentationFromFile(
                fileName, bool(properties.get("autoOpacities", True)), name, None, userMessages
            )
        elif fileType == "MarkupsFile":
            nodeId = env.markups.LoadMarkups(fileName, name, userMessages)
            node = env.scene.GetNodeByID(nodeId) if nodeId else None
        else:
            if userMessages is not None:
                userMessages.AddMessage(vtk.vtkCommand.ErrorEvent, f"Unsupported file type {fileType}")
            return False
        if node is None:
            return False
        loadedNodes.AddItem(node)
        return True

    def fileWriterFileType(self, node):
        for cls, kind in (
            ("vtkMRMLSegmentationNode", "SegmentationFile"),
            ("vtkMRMLMarkupsNode", "MarkupsFile"),
            ("vtkMRMLVolumeNode", "VolumeFile"),
        ):
            if node.IsA(cls):
                return kind
        return "NoFile"

    def saveNodes(self, fileType, properties, userMessages=None):
        node = self._env.scene.GetNodeByID(properties["nodeID"])
        if node is None:
            return False
        if node.GetStorageNode() is None:
            node.AddDefaultStorageNode()
        storage = node.GetStorageNode()
        storage.SetFileName(str(properties["fileName"]))
        if "useCompression" in properties:
            storage.SetUseCompression(bool(properties["useCompression"]))
        ok = bool(storage.WriteData(node))
        if not ok and userMessages is not None:
            userMessages.AddMessages(storage.GetUserMessages())
        return ok


class _FakeApp:
    def __init__(self, env):
        self._env, self._io = env, _CoreIOManager(env)
        self.temporaryPath = tempfile.gettempdir()
        # Qt's application signals (lastWindowClosed(), aboutToQuit()): connect refuses unknown ones
        self.signals = slicer_app_standins.Widget("QApplication", "SlicerApp")

    def connect(self, signal, slot):
        return self.signals.connect(signal, slot)

    def disconnect(self, signal, slot):
        return self.signals.disconnect(signal, slot)

    def coreIOManager(self):
        return self._io

    def ioManager(self):
        return self._io

    def applicationLogic(self):
        return self._env.app_logic

    def mrmlScene(self):
        return self._env.scene

    def processEvents(self):
        pass

    def testingEnabled(self):
        return True


class _Module(types.SimpleNamespace):
    def logic(self):
        return self._logic


def setup(scene=None):
    global _ENV
    env = types.SimpleNamespace(scene=scene or slicer.vtkMRMLScene(), app_logic=slicer.vtkSlicerApplicationLogic())
    env.app_logic.SetMRMLScene(env.scene)
    colors = env.app_logic.GetColorLogic()
    colors.SetMRMLScene(env.scene)
    colors.AddDefaultColorNodes()
    env.app_logic.SetModuleLogic("Colors", colors)
    modules = {}
    for attr, name, cls in (
        ("volumes", "Volumes", slicer.vtkSlicerVolumesLogic),
        ("segmentations", "Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
        ("markups", "Markups", slicer.vtkSlicerMarkupsLogic),
        ("subjecthierarchy", "SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic),
    ):
        logic = cls()
        logic.SetMRMLScene(env.scene)
        logic.SetMRMLApplicationLogic(env.app_logic)
        env.app_logic.SetModuleLogic(name, logic)
        setattr(env, attr, logic)
        modules[attr] = _Module(_logic=logic)
    # What the application has from start-up (or from first opening the Segment Editor): singletons.
    slicer_app_standins.add_segment_editor_node(env.scene)
    editor_module = slicer_app_standins.SegmentEditorModuleWidget()
    modules["segmenteditor"] = types.SimpleNamespace(
        widgetRepresentation=lambda: types.SimpleNamespace(self=lambda: editor_module)
    )
    slicer_app_standins.reset()
    slicer.mrmlScene = env.scene
    slicer.app = _FakeApp(env)
    slicer.modules = types.SimpleNamespace(**modules)
    _ENV = env
    return env.scene


def teardown():
    global _ENV
    if _ENV is not None:
        _ENV.scene.Clear(True)
    for attr in ("mrmlScene", "app", "modules"):
        if hasattr(slicer, attr):
            delattr(slicer, attr)
    _ENV = None


@pytest.fixture
def slicer_scene():
    """A fresh MRML scene installed as slicer.mrmlScene, with the module logics Slicer would provide."""
    scene = setup()
    yield scene
    teardown()


@pytest.fixture(scope="module")
def slicer_module():
    """SegVolSlicer.py, imported from the module folder as Slicer imports it."""
    spec = importlib.util.spec_from_file_location(
        "SegVolSlicer", Path(__file__).resolve().parents[2] / "SegVolSlicer.py"
    )
    loaded = importlib.util.module_from_spec(spec)
    sys.modules["SegVolSlicer"] = loaded  # Slicer imports module files as modules of that name
    spec.loader.exec_module(loaded)
    return loaded
