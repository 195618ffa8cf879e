"""The result files of `segvol segment` and `segvol batch`: a segmentation (.seg.nrrd, labelmap or DICOM SEG),
optionally the probabilities (FRACTIONAL DICOM SEG, or a probability map beside other outputs) and statistics.

    write_outputs(Path("out.seg.nrrd"), results, volume, image="CT.nii.gz", stats=Path("stats.csv"))
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..imageio import Segment, merge_segments, write_image_on, write_segmentation
from .confidence import result_confidence
from .dicom_seg import SegAlgorithm, is_dicom_seg_path, segments_from_results, weights_identity, write_dicom_seg
from .statistics import results_statistics, write_statistics

_ENDINGS = (".seg.nrrd", ".seg.nhdr", ".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm")


def probability_map_path(output: str | os.PathLike) -> Path:
    """Where --probabilities goes beside a non-DICOM output: out.seg.nrrd -> out.probabilities.nrrd."""
    output = Path(output)
    name = output.name
    for ending in _ENDINGS:
        if name.lower().endswith(ending):
            name = name[: -len(ending)]
            break
    return output.with_name(f"{name}.probabilities.nrrd")


def check_output_request(output: Path, image: str | os.PathLike, probabilities: bool, remote: bool) -> None:
    """Before the model runs: what cannot be written is refused with what to do instead."""
    from .dicom_seg import require_dicom_series

    if is_dicom_seg_path(output):
        require_dicom_series(image, output)
    if probabilities and remote:
        raise InputError(
            "--probabilities needs the probabilities on this machine, and a server sends masks only: run "
            "without --server, or without --probabilities (the server still sends each segment's confidence)"
        )


def write_probability_map(path: Path, results, volume) -> None:
    """float32 probabilities on the CT's grid, one component per target in target order."""
    stack = np.stack([result.probabilities.astype(np.float32) for result in results], axis=-1)
    image_array = stack[..., 0] if stack.shape[-1] == 1 else stack
    names = "|".join(result.name for result in results)
    write_image_on(path, image_array, volume.reference, stack.shape[-1] > 1, {"SegVol_Targets": names})


def write_segmentation_results(output: Path, results, volume, existing=()) -> list[str]:
    """The engine's results as `segvol segment` writes them (one named segment per target, Slicer's colours
    and terminology, the confidence as tags where the results have one), merged into `existing` segments;
    returns the writer's warnings."""
    segments = []
    for result in results:
        confidence = result_confidence(result)
        tags = confidence.tags() if confidence is not None else None
        segments.append(Segment.for_target(result.name, result.text, result.mask, tags))
    return write_segmentation(output, merge_segments(existing, segments), volume.reference)


def write_outputs(
    output: Path,
    results,
    volume,
    image: str | os.PathLike,
    targets: Sequence = (),
    weights: str | None = None,
    existing=(),
    probabilities: bool = False,
    stats: Path | None = None,
) -> list[str]:
    """Statistics first, then the probability map, the segmentation last (its presence means all is written);
    returns the writers' warnings."""
    if stats is not None:
        write_statistics(stats, results_statistics(results, volume, coordinates="LPS"))
    if is_dicom_seg_path(output):
        segments = segments_from_results(results, targets, probabilities)
        algorithm = SegAlgorithm(weights_identity(weights))
        write_dicom_seg(output, image, volume.ijk_to_ras, segments, algorithm, fractional=probabilities)
        return []
    if probabilities:
        write_probability_map(probability_map_path(output), results, volume)
    return write_segmentation_results(output, results, volume, existing)
