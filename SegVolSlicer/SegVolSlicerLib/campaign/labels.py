"""A case's label files: its existing result read as named segments, its accepted label written atomically.

An nnU-Net layout's label is a label map whose values are dataset.json's classes (a segment must carry one of
their names); elsewhere it is a Slicer .seg.nrrd with the segments' names, colours and tags. Both are written
under a temporary name and renamed into place, so an interrupted write leaves the previous label as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..imageio import (
    Segment,
    Volume,
    is_segmentation_path,
    read_label_volume,
    read_segmentation,
    write_mask,
    write_segmentation,
)


def class_segments(labels: np.ndarray, classes: Sequence[tuple[str, int]]) -> list[Segment]:
    """A label map's classes as segments, named after dataset.json (values it does not name: "label N")."""
    names = {value: name for name, value in classes}
    values = [int(v) for v in np.unique(labels) if v != 0]
    return [
        Segment.for_target(names.get(value, f"label {value}"), names.get(value), (labels == value).astype(np.uint8))
        for value in values
    ]


def read_label(path: str | Path, volume: Volume, classes: Sequence[tuple[str, int]] = ()) -> list[Segment]:
    """The segments of a .seg.nrrd, or of a label map (named by `classes`), on the CT's grid."""
    if is_segmentation_path(path):
        return read_segmentation(path, volume)
    return class_segments(read_label_volume(path, volume), classes)


def label_map(segments: Sequence[Segment], classes: Sequence[tuple[str, int]], path: Path) -> np.ndarray:
    """The segments as one label map with dataset.json's values (a later segment wins an overlapping voxel)."""
    values = dict(classes)
    unknown = [s.name for s in segments if s.name not in values]
    if unknown:
        raise InputError(
            f"{path}: segment(s) {', '.join(map(repr, unknown))} are not classes of the dataset "
            f"({', '.join(values) or 'dataset.json names none'}): rename them to one of those classes"
        )
    if max(values.values(), default=0) > 255:
        raise InputError(f"{path}: label values above 255 are not supported (dataset.json declares them)")
    labels = np.zeros(segments[0].mask.shape, dtype=np.uint8)
    for segment in segments:
        labels[segment.mask > 0] = values[segment.name]
    return labels


def write_label(path: Path, segments: Sequence[Segment], volume: Volume, classes: Sequence[tuple[str, int]]) -> None:
    """The accepted label, atomically: a .seg.nrrd of the segments, or a label map of dataset.json's values."""
    if not segments:
        raise InputError("nothing to accept: the case has no segment")
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_segmentation_path(path):
        write_segmentation(path, segments, volume.reference)
    else:
        write_mask(path, label_map(segments, classes, path), volume.reference)
