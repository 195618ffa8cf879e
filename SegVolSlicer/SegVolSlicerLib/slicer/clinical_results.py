"""The clinical side of the panel's results, on MRML (main thread): confidence tags on the segments SegVol
made, their statistics table, and the DICOM SEG export of a volume loaded from Slicer's DICOM database.

The engine results carry their probabilities (the logic's sessions keep them), so each segment's confidence is
computed from the same logits as its mask; it is stored as segment tags (saved with the scene).
"""

from __future__ import annotations

import dataclasses
import html

import numpy as np
import slicer
import vtk

from ..clinical.confidence import result_confidence
from ..clinical.statistics import SegmentStatistics, segment_statistics
from ..errors import InputError
from ..terminology import TERMINOLOGY_ENTRY_TAG, Code
from .bridge import world_ijk_to_ras
from .segments import MADE_BY_TAG, MADE_SEMIAUTOMATICALLY, TARGET_TAG

INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"  # set by Slicer's DICOM volume plugin on the volumes it loads
SLICER_ROUTE = (
    "import the CT into Slicer's DICOM database (DICOM module, Import) and load it from there, then segment it "
    "and export again; or export with the DICOM module (right-click the segmentation in the Data module, "
    "Export to DICOM, with the QuantitativeReporting extension)"
)


def results_statistics(names, results, voxels, ijk_to_ras) -> list[SegmentStatistics]:
    """The statistics of each result under its segment's name (RAS, the scene's coordinates), with its
    confidence. No MRML: the worker thread computes them (seconds on a large CT), not the GUI thread."""
    return [
        segment_statistics(name, result.mask, voxels, ijk_to_ras, result_confidence(result), "RAS")
        for name, result in zip(names, results)
    ]


def show_statistics(segmentation_node, segment_ids, statistics) -> list[SegmentStatistics]:
    """Store each segment's confidence as its tags (saved with the scene); returns the statistics under the
    names the segments have now (GUI thread, no voxel work)."""
    segmentation = segmentation_node.GetSegmentation()
    shown = []
    for segment_id, stats in zip(segment_ids, statistics):
        segment = segmentation.GetSegment(segment_id)
        if stats.confidence is not None:
            for key, value in stats.confidence.tags().items():
                segment.SetTag(key, value)
        shown.append(dataclasses.replace(stats, segment=segment.GetName()))
    return shown


def statistics_html(statistics: list[SegmentStatistics]) -> str:
    """A small table for a QLabel: segment, mL, HU mean +- SD, confidence (low ones in red)."""
    rows = ["<tr><th align='left'>Segment</th><th>mL</th><th>HU</th><th>Confidence</th></tr>"]
    for s in statistics:
        hu = "-" if s.hu_mean is None else f"{s.hu_mean:.0f} &plusmn; {s.hu_sd:.0f}"
        confidence = s.confidence
        if confidence is None or confidence.mean_probability is None:
            shown = "-"
        else:
            shown = f"{confidence.mean_probability:.2f} ({100 * (confidence.uncertain_share or 0):.0f}% uncertain)"
            if confidence.low:
                shown = f"<b><font color='#c62828'>{shown} low</font></b>"
        rows.append(
            f"<tr><td>{html.escape(s.segment)}</td><td align='right'>{s.volume_ml:.1f}</td>"
            f"<td align='right'>{hu}</td><td>{shown}</td></tr>"
        )
    return "<table cellspacing='4'>" + "".join(rows) + "</table>"


def check_dicom_place(volume_node) -> None:
    """A DICOM SEG lies on the CT's DICOM grid, where its files put it: a CT moved by a transform is refused,
    with what to do."""
    parent = volume_node.GetParentTransformNode()
    if parent is None:
        return
    local = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(local)
    if np.allclose(world_ijk_to_ras(volume_node), slicer.util.arrayFromVTKMatrix(local)):
        return  # an identity transform moves nothing
    raise InputError(
        f"'{volume_node.GetName()}' is under the transform '{parent.GetName()}', so it is not where its DICOM "
        "files place it, and a DICOM SEG (which lies on the CT's DICOM grid) would not match what you see. "
        f"If '{parent.GetName()}' only moves the CT for viewing, take the CT and its segmentation out of it (Data "
        "module: drag them to the top level) and export again. To keep the moved CT, harden the transform "
        f"(Data module: right-click '{parent.GetName()}', Harden transform) and save the segmentation as "
        ".seg.nrrd or NIfTI instead: a hardened CT no longer matches its DICOM files."
    )


def dicom_files(volume_node, file_for_instance=None) -> list[str]:
    """The DICOM files the volume was loaded from, or an InputError naming Slicer's route."""
    uids = (volume_node.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").split()
    if not uids:
        raise InputError(
            f"'{volume_node.GetName()}' was not loaded from Slicer's DICOM database, so a DICOM SEG cannot "
            f"reference it: {SLICER_ROUTE}"
        )
    if file_for_instance is None:
        database = getattr(slicer, "dicomDatabase", None)
        if database is None:
            raise InputError(f"Slicer's DICOM database is not open: {SLICER_ROUTE}")
        file_for_instance = database.fileForInstance
    files = [file_for_instance(uid) for uid in uids]
    if not all(files):
        raise InputError(f"some DICOM files of '{volume_node.GetName()}' are no longer in the database: {SLICER_ROUTE}")
    return files


def export_segments(segmentation_node, segment_ids, volume_node):
    """Each segment as a DICOM SEG takes it, mask on the volume's grid: a segment SegVol made (MADE_BY_TAG)
    with its text (its codes) and whether clicks or a box were used; any other (drawn by hand, made by
    another tool) as MANUAL, with its own terminology when it has one."""
    from ..clinical.dicom_seg import SegSegment

    segmentation = segmentation_node.GetSegmentation()
    segments = []
    for segment_id in segment_ids:
        segment = segmentation.GetSegment(segment_id)
        mask = np.asarray(slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume_node))
        mask = mask.astype(np.uint8)
        made_by = _tag(segment, MADE_BY_TAG)
        if made_by is None:
            codes = terminology_codes(_tag(segment, TERMINOLOGY_ENTRY_TAG))
            segments.append(SegSegment(segment.GetName(), None, mask, made_by_segvol=False, codes=codes))
        else:
            text = _tag(segment, TARGET_TAG)
            segments.append(SegSegment(segment.GetName(), text, mask, made_by == MADE_SEMIAUTOMATICALLY))
    return segments


def terminology_codes(entry: str | None) -> tuple[Code, Code, Code | None] | None:
    """(category, type, modifier or None) of a serialized Slicer terminology entry
    ("context~SCT^85756007^Tissue~SCT^...~..."), or None when it names no category and type."""
    parts = (entry or "").split("~")
    if len(parts) < 3:
        return None
    codes = []
    for part in parts[1:4]:
        fields = part.split("^")
        codes.append(Code(*fields) if len(fields) == 3 and all(fields[:2]) else None)
    category, type_, modifier = (codes + [None])[:3]
    return None if category is None or type_ is None else (category, type_, modifier)


def _tag(segment, name) -> str | None:
    value = vtk.reference("")
    return value.get() if segment.GetTag(name, value) and value.get() else None
