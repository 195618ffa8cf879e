"""The Segment Editor's undo history and settings as the panel uses them (SegVolSlicerLib/slicer/editor.py and
the writer's "Use Segment Editor overwrite and masking settings").

What it guards: the writer pointing the Segment Editor's own node at SegVol's segmentation (the editor
switches after the user answered No, or during an auto-update run, and its undo history is erased while the
status says it stayed); an Undo that asks to switch the editor back to a segmentation whose history the switch
just cleared.
"""

import pytest
import slicer
from slicer_app_standins import undo_history
from slicer_core_env import slicer_module, slicer_scene  # noqa: F401  (fixtures)
from test_slicer_panel_lifecycle import segmentation_named
from test_slicer_widget import panel, segment_count  # noqa: F401  (panel: fixture)

from SegVolSlicerLib.slicer import checks


@pytest.mark.parametrize("interactive", [True, False], ids=["the user answers No", "auto-update"])
def test_editor_settings_never_switch_the_segment_editor(panel, monkeypatch, interactive):  # noqa: F811
    widget, parameters, dialogs = panel
    monkeypatch.setattr(slicer.util, "confirmYesNoDisplay", lambda text, **kwargs: False)
    parameters.useSegmentEditorSettings = True
    other = segmentation_named("manual work")
    widget.editor.setSegmentationNode(other)
    widget.editor.saveStateForUndo()  # the user's own step on 'manual work'
    editor_node = widget.editor.mrmlSegmentEditorNode()
    widget.runSegmentation(interactive=interactive)
    assert segment_count(parameters) == 1
    assert editor_node.GetSegmentationNode() is other and widget.editor.segmentationNode() is other
    assert undo_history(widget.editor) == ["step"], "the user's undo history was erased"
    assert "Not undoable: the Segment Editor stays on 'manual work'" in widget.ui.statusLabel.text


def test_editor_settings_still_apply(panel):  # noqa: F811
    """Overwrite "all segments" from the Segment Editor carves the other segments, as there."""
    widget, parameters, dialogs = panel
    parameters.useSegmentEditorSettings = True
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    parameters.outputSegmentation = segmentation
    widget.runSegmentation(interactive=True)
    first = segmentation.GetSegmentation().GetNthSegmentID(0)
    before = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, first, parameters.inputVolume).sum()
    editor_node = widget.editor.mrmlSegmentEditorNode()
    editor_node.SetOverwriteMode(editor_node.OverwriteAllSegments)
    widget.onNewSegment()  # a second structure where the first one is
    ijk_to_ras = checks.oblique_lps_ijk_to_ras()
    parameters.positivePoints.AddControlPoint(*checks.ijk_to_ras_points(ijk_to_ras, [12.0, 10.0, 6.0]))
    widget.runSegmentation(interactive=True)
    after = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, first, parameters.inputVolume).sum()
    assert segment_count(parameters) == 2 and after < before


def test_undo_after_the_editor_moved_on_does_not_switch_it_back(panel, monkeypatch):  # noqa: F811
    widget, parameters, dialogs = panel
    monkeypatch.setattr(slicer.util, "confirmYesNoDisplay", lambda text, **kwargs: pytest.fail(f"asked: {text}"))
    widget.runSegmentation(interactive=True)
    ours = parameters.outputSegmentation
    assert widget.editor.segmentationNode() is ours and undo_history(widget.editor) == ["step"]
    other = segmentation_named("manual work")
    widget.editor.setSegmentationNode(other)  # the user moved on: the editor's history is now other's
    widget._undo()
    assert widget.editor.segmentationNode() is other
    assert segment_count(parameters) == 1
    assert widget.ui.statusLabel.text.startswith(f"Nothing of '{ours.GetName()}' to undo here")
