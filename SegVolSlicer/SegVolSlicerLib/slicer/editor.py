"""The Segment Editor's undo history for SegVol's runs: point the editor at our segmentation (asking before
it leaves another one, whose history that would erase), and Undo/Redo there.

The Segment Editor keeps the history of one segmentation only. Switching it is the user's decision: an
auto-update run never asks and never switches.
"""

from __future__ import annotations

import slicer
from slicer.i18n import tr as _

SWITCH_EDITOR = _(
    "The Segment Editor has '{shown}' open. Switch it to '{wanted}' so that SegVol's steps can be undone? "
    "The Segment Editor keeps the undo history of one segmentation only: the history of '{shown}' is cleared."
)
NOT_UNDOABLE = _("Not undoable: the Segment Editor stays on '{name}' (Undo there undoes that one's steps).")


class EditorHistory:
    """The Segment Editor module's editor widget, as SegVol's runs use it."""

    def editor(self):
        module = slicer.modules.segmenteditor.widgetRepresentation().self()
        module.selectParameterNode()
        return module.editor

    def point_at(self, segmentation_node, volume_node, interactive=True):
        """The editor, pointed at `segmentation_node` when that is safe (its undo history then holds SegVol's
        steps too); a non-interactive run, or a user who answers No, leaves it where it is."""
        editor = self.editor()
        shown = editor.segmentationNode()
        if shown != segmentation_node:
            if shown is not None and shown.GetScene() is not None:
                if not interactive or not slicer.util.confirmYesNoDisplay(
                    SWITCH_EDITOR.format(shown=shown.GetName(), wanted=segmentation_node.GetName())
                ):
                    return editor
            editor.setSegmentationNode(segmentation_node)
        if volume_node is not None and editor.sourceVolumeNode() != volume_node:
            editor.setSourceVolumeNode(volume_node)
        return editor

    def undo(self, segmentation_node, volume_node, redo=False) -> None:
        """Undo (or redo) a step of `segmentation_node` in the Segment Editor's history."""
        if segmentation_node is None:
            return
        editor = self.point_at(segmentation_node, volume_node)
        if editor.segmentationNode() != segmentation_node:
            return  # the user kept the Segment Editor on another segmentation: nothing of ours to undo there
        if redo:
            editor.redo()
        else:
            editor.undo()
