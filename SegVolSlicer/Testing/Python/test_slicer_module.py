"""SegVolSlicer.py in plain Python: it imports without Qt, and its logic runs end to end on real MRML."""

import re
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
import slicer
from slicer_core_env import slicer_module, slicer_scene  # noqa: F401  (fixtures)

from SegVolSlicerLib.slicer import bridge, checks, segments

MODULE_DIR = Path(__file__).resolve().parents[2]


def test_module_imports_slicers_application_modules(slicer_module):  # noqa: F811
    """As Slicer's template: qt, ctk and slicer.ScriptedLoadableModule come from the application (here its
    stand-ins), with no plain-Python substitutes of its own that could hide a missing member."""
    from SegVolSlicerLib.slicer import results_section

    for path in (MODULE_DIR / "SegVolSlicer.py", *(MODULE_DIR / "SegVolSlicerLib" / "slicer").glob("*.py")):
        assert "except ImportError" not in path.read_text(encoding="utf-8"), path
    assert slicer_module.qt is sys.modules["qt"] and results_section.ctk is sys.modules["ctk"]
    assert issubclass(slicer_module.SegVolSlicerTest, __import__("unittest").TestCase)


def test_parameter_node_matches_the_panel(slicer_module):  # noqa: F811
    """Every GUI-bound parameter has a widget in the .ui file, and every widget the code uses exists."""
    tree = ElementTree.parse(MODULE_DIR / "Resources" / "UI" / "SegVolSlicer.ui")
    bound = {prop.find("string").text for prop in tree.iter("property") if prop.get("name") == "SlicerParameterName"}
    prompt_nodes = {
        "positivePoints",
        "negativePoints",
        "boxROI",
        "positiveStroke",
        "negativeStroke",
    }  # set by code, shown by the place widgets
    assert bound | prompt_nodes == set(slicer_module.SegVolSlicerParameterNode.__annotations__)
    widget_names = {w.get("name") for w in tree.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", (MODULE_DIR / "SegVolSlicer.py").read_text()))
    assert used <= widget_names, used - widget_names


def test_parameter_node_defaults(slicer_module, slicer_scene):  # noqa: F811
    parameters = slicer_module.SegVolSlicerLogic().getParameterNode()
    assert parameters.device == "auto" and parameters.zoomIn is True and parameters.targetNames == ""
    with pytest.raises(ValueError):
        parameters.device = "tpu"


def test_logic_end_to_end(slicer_module, slicer_scene, synthetic_model):  # noqa: F811
    checks.check_logic_end_to_end(slicer_module.SegVolSlicerLogic(), synthetic_model)


@pytest.mark.parametrize("check", checks.LOGIC_CHECKS, ids=lambda check: check.__name__)
def test_logic(check, slicer_module, slicer_scene):  # noqa: F811
    check(slicer_module.SegVolSlicerLogic())


def test_prompt_nodes_are_tagged_and_distinct(slicer_scene):  # noqa: F811
    nodes = {
        role: bridge.create_prompt_node(slicer.mrmlScene, role)
        for role in (bridge.POSITIVE_ROLE, bridge.NEGATIVE_ROLE, bridge.BOX_ROLE)
    }
    colours = {tuple(node.GetDisplayNode().GetSelectedColor()) for node in nodes.values()}
    assert len(colours) == 3
    # Red and green alone fail colour-blind users: negative clicks are crosses too.
    positive, negative = (nodes[role].GetDisplayNode() for role in (bridge.POSITIVE_ROLE, bridge.NEGATIVE_ROLE))
    assert negative.GetGlyphType() != positive.GetGlyphType()
    negative_node = nodes[bridge.NEGATIVE_ROLE]
    negative_node.AddControlPoint(1.0, 2.0, 3.0)
    bridge.tag_point_descriptions(negative_node)
    assert negative_node.GetNthControlPointDescription(0) == "negative"
    bridge.clear_prompts(nodes.values())
    assert all(node.GetNumberOfControlPoints() == 0 for node in nodes.values())


def test_names_are_split_once_each():
    assert segments.split_names(" liver,spleen ; left  kidney\nliver,, ") == ["liver", "spleen", "left kidney"]


def test_terminology_matches_slicers_own_lookup():
    """Our JSON reading agrees with vtkSlicerTerminologiesModuleLogic on the vendored files."""
    from SegVolSlicerLib import terminology

    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    contexts = {key: logic.LoadTerminologyFromFile(str(path)) for key, path in terminology.LIST_FILES.items()}
    assert all(contexts.values())
    checked = 0
    for name in terminology.mapped_categories():
        term = terminology.standard_term(name)
        entry = slicer.vtkSlicerTerminologyEntry()
        assert logic.DeserializeTerminologyEntry(term.entry, entry), name
        assert logic.SerializeTerminologyEntry(entry) == term.entry
        assert entry.GetTerminologyContextName() in contexts.values()
        found = slicer.vtkSlicerTerminologyEntry()
        if logic.FindTypeInTerminologyBy3dSlicerLabel(entry.GetTerminologyContextName(), term.label, found):
            checked += 1
            assert found.GetTypeObject().GetCodeValue() == entry.GetTypeObject().GetCodeValue(), name
            assert found.GetTypeModifierObject().GetCodeValue() == entry.GetTypeModifierObject().GetCodeValue(), name
            modifier_rgb = found.GetTypeModifierObject().GetRecommendedDisplayRGBValue()
            rgb = (
                modifier_rgb
                if found.GetTypeModifierObject().GetCodeValue() and tuple(modifier_rgb) != (127, 127, 127)
                else found.GetTypeObject().GetRecommendedDisplayRGBValue()
            )
            assert np.allclose(np.array(term.color) * 255, rgb, atol=0.5), name
    assert checked >= 50, checked  # every mapped name that has a Slicer label
    assert terminology.standard_term("liver tumor") is None


def test_segment_look_for_text():
    from SegVolSlicerLib import terminology, vocabulary

    ivc = terminology.look_for_text("IVC")
    assert ivc.name == "inferior vena cava" and "SCT^64131007^Inferior vena cava" in ivc.terminology_entry
    assert ivc.color == tuple(vocabulary.colour_for("postcava"))  # the DICOM list recommends no colour
    assert terminology.look_for_text("Kidney L").name == "left kidney"
    tumour = terminology.look_for_text("liver tumour")
    assert (tumour.name, tumour.terminology_entry) == ("liver tumor", terminology.unspecified_term().entry)
    assert terminology.look_for_text("  my   lesion ").name == "my lesion"


def test_logic_falls_back_to_cpu_when_the_gpu_is_full(slicer_module, slicer_scene, monkeypatch):  # noqa: F811
    """A GPU out of memory: the model moves to the CPU, the user is told, the run completes there.
    (An Apple GPU here: a CUDA model would need a CUDA build of torch to stage its input.)"""
    import torch
    from fake_segvol import FakeSegVol

    class FullGpuSegVol(FakeSegVol):
        def __init__(self):
            super().__init__()
            self.device, self.precision = torch.device("mps"), "fp16"

        def to(self, device):
            self.device = torch.device(device)
            return self

        def set_precision(self, precision):
            self.precision = (precision, self.device.type)

        def encode_image(self, image):
            if self.device.type != "cpu":
                raise RuntimeError("MPS backend out of memory (MPS allocated: 9.00 GB)")
            return super().encode_image(image)

    logic = slicer_module.SegVolSlicerLogic()
    model = FullGpuSegVol()
    logic.useModel(model)
    volume = checks.make_volume(checks.oblique_lps_ijk_to_ras())
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segment_ids, messages = logic.process(volume, segmentation, names="liver", zoomIn=False, device="mps")
    assert model.device.type == "cpu" and model.image_calls == 1
    assert model.precision == ("auto", "cpu")  # chosen again on the CPU: a GPU's fp16 does not run there
    assert len(segment_ids) == 1 and any("continues on the CPU" in m for m in messages), messages


def test_logic_keeps_the_sessions_of_recent_volumes_only(slicer_module, slicer_scene):  # noqa: F811
    """Each session holds a float copy of its volume and its embeddings: old ones must not pile up."""
    from fake_segvol import FakeSegVol

    logic = slicer_module.SegVolSlicerLogic()
    logic.useModel(FakeSegVol())
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    volumes = [checks.make_volume(checks.oblique_lps_ijk_to_ras(), f"CT {n}") for n in range(3)]

    def kept():
        return [logic.engine.kept_session(volume.GetID()) is not None for volume in volumes]

    for volume in volumes[:2]:
        logic.process(volume, segmentation, names="liver", zoomIn=False)
    assert logic.engine.max_sessions == 2 and kept() == [True, True, False]
    logic.process(volumes[0], segmentation, names="spleen", zoomIn=False)  # volume 0 is now the most recent
    logic.process(volumes[2], segmentation, names="liver", zoomIn=False)
    assert kept() == [True, False, True]
