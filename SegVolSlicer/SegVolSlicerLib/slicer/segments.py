"""MRML out: where each result goes (SegmentSpec: a name's segment found again, or a new "SegVol N"), segment
tags, masks read back, and SegmentWriter putting masks into a segmentation in place (undo-able, edits kept).

Call everything here on Slicer's main thread (MRML is not thread-safe); bridge.py reads the inputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
from dataclasses import dataclass

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from .. import prompts, terminology, vocabulary
from ..errors import InputError
from ..prompts import Box, Points, Target
from .bridge import node_to_world, world_ijk_to_ras

# Segment tag naming the text target that produced the segment: re-running that target updates the segment.
TARGET_TAG = "SegVol.Target"
# Segment tag saying SegVol made the segment, and how (a DICOM SEG's algorithm type); absent: by hand or another tool.
MADE_BY_TAG = "SegVol.MadeBy"
MADE_AUTOMATICALLY, MADE_SEMIAUTOMATICALLY = "AUTOMATIC", "SEMIAUTOMATIC"
DEFAULT_SEGMENT_PREFIX = "SegVol"
LABELMAP = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()


def create_segmentation_node(volume_node):
    """A new segmentation for the results on `volume_node`, named after it, with the volume's geometry."""
    scene = volume_node.GetScene()
    node = scene.AddNewNodeByClass(
        "vtkMRMLSegmentationNode", scene.GenerateUniqueName(f"{volume_node.GetName()} SegVol")
    )
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    return node


@dataclass(frozen=True)
class SegmentSpec:
    """Where one result goes: an existing segment (segment_id) or a new one with this name, colour and codes."""

    name: str
    color: tuple[float, float, float]
    terminology_entry: str | None = None
    target_key: str | None = None  # TARGET_TAG value: finds the segment of an earlier run of the same text
    segment_id: str | None = None  # refine this segment


def spec_for_text(text: str) -> SegmentSpec:
    """A text target's segment: Slicer's standard anatomy name, colour and codes where the category maps to it."""
    look = terminology.look_for_text(text)
    # Keyed by the segment name, so that synonyms of one structure ("kidney left", "left kidney") share a segment.
    return SegmentSpec(look.name, look.color, look.terminology_entry, target_key=look.name)


def spec_for_new_segment(segmentation_node) -> SegmentSpec:
    """A segment for a prompt without text: "SegVol 1", "SegVol 2", ... (first unused number; None: a
    segmentation yet to be made)."""
    used = set()
    if segmentation_node is not None:
        segmentation = segmentation_node.GetSegmentation()
        used = {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
    number = next(n for n in itertools.count(1) if f"{DEFAULT_SEGMENT_PREFIX} {n}" not in used)
    name = f"{DEFAULT_SEGMENT_PREFIX} {number}"
    return SegmentSpec(name, vocabulary.colour_for(name))


def spec_for_segment(segmentation_node, segment_id: str) -> SegmentSpec:
    """Refine an existing segment: its name, colour and codes stay as they are."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise InputError(f"segment '{segment_id}' no longer exists: select another segment or a new one")
    return SegmentSpec(segment.GetName(), tuple(segment.GetColor()), segment_id=segment_id)


def split_names(text: str) -> list[str]:
    """Anatomy names typed as "liver, spleen; left kidney" -> ["liver", "spleen", "left kidney"] (no repeats)."""
    names = [" ".join(part.split()) for part in re.split(r"[,;\n]", text or "")]
    return list(dict.fromkeys(name for name in names if name))


def plan_targets(
    names: list[str], points: Points | None, box: Box | None, segmentation_node, refine_segment_id: str | None = None
) -> list[tuple[Target, SegmentSpec]]:
    """What to segment (prompts.plan_targets) and where each result goes: a name's segment is found again
    when the name is run again; without a name, the prompts refine `refine_segment_id` or make a new
    "SegVol N"."""
    unnamed = None
    if not names:
        unnamed = (
            spec_for_segment(segmentation_node, refine_segment_id)
            if refine_segment_id
            else spec_for_new_segment(segmentation_node)
        )
    targets = prompts.plan_targets(names, points, box, unnamed.name if unnamed else "")
    return [(target, spec_for_text(target.text) if target.text is not None else unnamed) for target in targets]


def tag_made_by_segvol(segmentation_node, segment_id: str, target) -> None:
    """Mark a segment SegVol wrote: automatically (its text alone) or semiautomatically (clicks or a box)."""
    how = MADE_AUTOMATICALLY if target.points is None and target.box is None else MADE_SEMIAUTOMATICALLY
    segmentation_node.GetSegmentation().GetSegment(segment_id).SetTag(MADE_BY_TAG, how)


def with_segment_id(segmentation_node, spec: SegmentSpec) -> SegmentSpec:
    """`spec` naming the segment its result goes to, chosen before the run (the engine keeps the result under
    it): the one given, the segment an earlier run of the same text made, or the ID a new segment will get."""
    segment_id = spec.segment_id
    if segment_id is None and spec.target_key is not None:
        segment_id = find_target_segment(segmentation_node, spec.target_key)
    if segment_id is None:
        segment_id = segmentation_node.GetSegmentation().GenerateUniqueSegmentID(spec.name)
    return dataclasses.replace(spec, segment_id=segment_id)


def segment_mask(segmentation_node, segment_id: str, volume_node) -> np.ndarray:
    """A segment's voxels (K, J, I) uint8 on the volume's grid, as they are now."""
    return np.asarray(slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume_node), np.uint8)


def segment_stamp(segmentation_node, segment_id: str) -> tuple | None:
    """What a segment's voxels are now, cheaply: its labelmap's modification time and a digest of its voxels
    in its layer (None without a labelmap). Compare with `segment_unchanged`."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    labelmap = segment.GetRepresentation(LABELMAP) if segment is not None else None
    if labelmap is None:
        return None
    return int(labelmap.GetMTime()), _voxels_digest(labelmap, segment.GetLabelValue())


def segment_unchanged(segmentation_node, segment_id: str, stamp: tuple | None) -> bool:
    """Whether the segment holds the voxels it had when `stamp` was taken. The modification time alone
    would do for a segment alone in its layer; a layer shared with other segments changes with each of
    them, so a changed time is confirmed by the voxels' digest."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    labelmap = segment.GetRepresentation(LABELMAP) if segment is not None else None
    if stamp is None or labelmap is None:
        return False
    return int(labelmap.GetMTime()) == stamp[0] or _voxels_digest(labelmap, segment.GetLabelValue()) == stamp[1]


def _voxels_digest(labelmap, label_value: int) -> bytes:
    scalars = labelmap.GetPointData().GetScalars()
    inside = numpy_support.vtk_to_numpy(scalars) == label_value if scalars is not None else np.zeros(0, bool)
    digest = hashlib.blake2b(np.packbits(inside).tobytes(), digest_size=16)
    digest.update(repr(tuple(labelmap.GetExtent())).encode())
    return digest.digest()


def check_labelmap_source(segmentation_node) -> None:
    """Results are voxels: a segmentation whose segments are stored as surfaces would silently get empty
    segments (the surfaces are the source, voxels derived from them), and converting it is the user's choice."""
    segmentation = segmentation_node.GetSegmentation()
    if segmentation.GetSourceRepresentationName() != LABELMAP and segmentation.GetNumberOfSegments():
        raise InputError(
            f"segmentation '{segmentation_node.GetName()}' stores its segments as "
            f"{segmentation.GetSourceRepresentationName().lower()}s: make 'Binary labelmap' its source "
            "representation (Segmentations module, Representations) or choose another segmentation"
        )


def find_target_segment(segmentation_node, target_key: str) -> str | None:
    segmentation = segmentation_node.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        value = vtk.reference("")
        if segment.GetTag(TARGET_TAG, value) and value.get() == target_key:
            return segmentation.GetNthSegmentID(index)
    return None


class SegmentWriter:
    """Writes masks into a segmentation as a Segment Editor effect would.

    Each `write` is one undo step (state saved before anything changes, new segments included) and goes through
    vtkSlicerSegmentEditorLogic.ModifySegmentByLabelmap, so overwrite and masking settings apply exactly as in
    the Segment Editor. The writer always edits through its own (hidden) editor node: `editor_node`, the Segment
    Editor's, only lends its overwrite and masking settings, read at each write; without it other segments are
    never modified (overlap allowed) and editing is allowed everywhere. Pointing the Segment Editor's own node at
    this segmentation would switch the Segment Editor and erase its undo history, whatever the user decided.
    `save_state_for_undo` is the undo owner (the Segment Editor widget's `saveStateForUndo` in Slicer, so Ctrl+Z
    there walks back AI steps and manual edits alike); without it the writer keeps its own undo history
    (`undo`/`redo`). `notes`: settings that could not apply, for the status line.
    """

    def __init__(self, segmentation_node, volume_node, editor_node=None, save_state_for_undo=None):
        check_labelmap_source(segmentation_node)
        scene = segmentation_node.GetScene()
        self.segmentation_node, self.volume_node = segmentation_node, volume_node
        self._settings_node = editor_node
        self.notes: list[str] = []
        own = slicer.vtkMRMLSegmentEditorNode()
        own.SetHideFromEditors(True)
        own.SetSaveWithScene(False)
        own.SetOverwriteMode(own.OverwriteNone)
        own.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere)
        scene.AddNode(own)
        self._own_editor_node = own
        self._logic = slicer.vtkSlicerSegmentEditorLogic()
        self._logic.SetMRMLScene(scene)
        app = getattr(slicer, "app", None)  # absent in plain slicer-core without the test shim
        if app is not None:
            self._logic.SetMRMLApplicationLogic(app.applicationLogic())
        self._logic.SetSegmentEditorNode(own)
        self._logic.SetSegmentationNode(segmentation_node)
        self._logic.SetSourceVolumeNode(volume_node)
        self._save_state = save_state_for_undo or self._logic.SaveStateForUndo
        if not segmentation_node.GetDisplayNode():
            segmentation_node.CreateDefaultDisplayNodes()
        if not segmentation_node.GetSegmentation().GetNumberOfSegments():
            # As the Segment Editor does: an empty segmentation takes the geometry of the volume it segments
            # and stores voxels.
            segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
            segmentation_node.GetSegmentation().SetSourceRepresentationName(LABELMAP)

    def _take_settings(self) -> None:
        """The Segment Editor's overwrite and masking settings, as they are now, on the writer's own node."""
        settings, own = self._settings_node, self._own_editor_node
        if settings is None:
            return
        own.SetOverwriteMode(settings.GetOverwriteMode())
        own.SetSourceVolumeIntensityMask(settings.GetSourceVolumeIntensityMask())
        own.SetSourceVolumeIntensityMaskRange(settings.GetSourceVolumeIntensityMaskRange())
        mask_mode, mask_segment = settings.GetMaskMode(), settings.GetMaskSegmentID()
        if mask_mode == slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment and (
            settings.GetSegmentationNode() is not self.segmentation_node
            or self.segmentation_node.GetSegmentation().GetSegment(mask_segment or "") is None
        ):
            # the editable area is a segment of another segmentation: it cannot mask this one
            mask_mode, mask_segment = slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere, None
            name = self.segmentation_node.GetName()
            note = f"The Segment Editor's editable area is a segment of another segmentation: not applied to '{name}'."
            if note not in self.notes:
                self.notes.append(note)
        own.SetMaskMode(mask_mode)
        own.SetMaskSegmentID(mask_segment)

    def close(self):
        """Remove the writer's private editor node from the scene."""
        if self._own_editor_node is not None and self._own_editor_node.GetScene() is not None:
            self._own_editor_node.GetScene().RemoveNode(self._own_editor_node)
        self._own_editor_node = None

    def write(self, results: list[tuple[SegmentSpec, np.ndarray]]) -> list[str]:
        """Write (spec, mask (K,J,I) on the volume grid) pairs as one undo step; returns the segment IDs."""
        ijk_to_segmentation = np.linalg.inv(node_to_world(self.segmentation_node)) @ world_ijk_to_ras(self.volume_node)
        expected_shape = slicer.util.arrayFromVolume(self.volume_node).shape
        for _, mask in results:
            if mask.shape != expected_shape:
                raise InputError(
                    f"a mask of shape {mask.shape} does not fit volume "
                    f"'{self.volume_node.GetName()}' of shape {expected_shape}"
                )
        self._take_settings()
        self._save_state()
        segment_ids = []
        for spec, mask in results:
            segment_id = self._segment_for(spec)
            self._logic.ModifySegmentByLabelmap(
                self.segmentation_node,
                segment_id,
                _oriented_labelmap(mask, ijk_to_segmentation),
                self._logic.ModificationModeSet,
                True,
                False,
            )
            segment_ids.append(segment_id)
        return segment_ids

    def _segment_for(self, spec: SegmentSpec) -> str:
        segmentation = self.segmentation_node.GetSegmentation()
        if spec.segment_id is not None and segmentation.GetSegment(spec.segment_id) is not None:
            return spec.segment_id
        if spec.target_key is not None:
            existing = find_target_segment(self.segmentation_node, spec.target_key)
            if existing is not None:
                return existing
        segment_id = segmentation.AddEmptySegment(spec.segment_id or "", spec.name, list(spec.color))
        segment = segmentation.GetSegment(segment_id)
        # Model names and colours are final: keep Slicer's terminology UI from regenerating them.
        segment.SetNameAutoGenerated(False)
        segment.SetColorAutoGenerated(False)
        if spec.terminology_entry:
            segment.SetTag(terminology.TERMINOLOGY_ENTRY_TAG, spec.terminology_entry)
        if spec.target_key is not None:
            segment.SetTag(TARGET_TAG, spec.target_key)
        return segment_id

    def undo(self) -> None:
        self._logic.Undo()

    def redo(self) -> None:
        self._logic.Redo()


def _oriented_labelmap(mask: np.ndarray, ijk_to_ras: np.ndarray):
    """A binary vtkOrientedImageData holding mask (K,J,I) with the given voxel-to-RAS matrix."""
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(mask.shape[2], mask.shape[1], mask.shape[0])
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(mask.shape)[:] = mask != 0
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
    return image
