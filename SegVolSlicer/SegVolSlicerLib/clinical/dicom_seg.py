"""DICOM Segmentation objects (through highdicom) for results on a CT read from a DICOM series.

The SEG references the source series (its study, frame of reference and every instance, one frame per source
slice with that slice's position and orientation), has one segment per target with the codes the project maps
from Slicer's terminology, and says which algorithm made it (SegVol, the weights, this package's version;
AUTOMATIC for text prompts alone, SEMIAUTOMATIC when clicks or a box were used). BINARY holds the masks;
FRACTIONAL (PROBABILITY, 8 bits) holds SegVol's probabilities, whose > 0.5 is the mask.

    write_dicom_seg("result.dcm", "CT/", ijk_to_ras, [SegSegment("liver", "liver", mask)], SegAlgorithm("BAAI/SegVol"))
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .. import __version__
from ..dicom_series import DicomSeries, choose_series
from ..errors import InputError
from ..files import atomic_output
from ..terminology import Code, look_for_segment

DICOM_SEG_ENDINGS = (".dcm",)
SERIES_NUMBER_OFFSET = 1000  # the SEG's series number: the CT's plus this (0 + this when the CT has none)
MAX_FRACTIONAL_VALUE = 255


def is_dicom_seg_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(DICOM_SEG_ENDINGS)


@dataclass(frozen=True)
class SegAlgorithm:
    """Who made the segmentation: the weights' identity and whether the user's clicks or box were used."""

    weights: str  # e.g. "BAAI/SegVol" or the checkpoint file name
    name: str = "SegVol"
    source: str = "BAAI-DCAI/SegVol"


@dataclass
class SegSegment:
    name: str
    text: str | None  # the anatomy text the target was prompted with (its codes), None for clicks/box alone
    mask: np.ndarray  # (K, J, I) on the DICOM volume's grid
    semiautomatic: bool = False  # clicks or a box were used
    probabilities: np.ndarray | None = None  # (K, J, I) float, for FRACTIONAL
    made_by_segvol: bool = True  # False: drawn by hand or made by another tool (algorithm type MANUAL)
    codes: tuple[Code, Code, Code | None] | None = None  # the segment's own (category, type, modifier)


def weights_identity(weights: str | None) -> str:
    """How a SEG names the weights: the Hugging Face repository, or the checkpoint's file or folder name."""
    return "BAAI/SegVol" if weights is None else Path(weights).name


def require_dicom_series(image: str | os.PathLike, output: str | os.PathLike) -> None:
    """DICOM SEG references the CT's DICOM instances: refuse any other input with what to do instead."""
    if not Path(image).expanduser().is_dir():
        raise InputError(
            f"{output}: a DICOM SEG can only be written for a CT read from a DICOM series (it references the "
            f"CT's DICOM instances), and {image} is not a DICOM folder: give the DICOM series folder, or write "
            "a .seg.nrrd or .nii.gz instead"
        )


def cielab_from_rgb(rgb: Sequence[float]) -> tuple[float, float, float]:
    """CIE L*a*b* (D65) of an sRGB colour in [0, 1], as DICOM's RecommendedDisplayCIELabValue and dcmqi take it.

    highdicom has this from 0.27 (CIELabColor.from_rgb), but Slicer 5.10's pydicom 2.4 allows only highdicom
    0.22; the tests check that dcmqi reads back the RGB colour.

    >>> [round(v, 2) for v in cielab_from_rgb((1.0, 0.0, 0.0))]
    [53.24, 80.09, 67.2]
    """
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in np.clip(rgb, 0.0, 1.0)]
    srgb_to_xyz = [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
    xyz = np.array(srgb_to_xyz) @ linear
    f = [t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29 for t in xyz / [0.95047, 1.0, 1.08883]]
    return float(116 * f[1] - 16), float(500 * (f[0] - f[1])), float(200 * (f[1] - f[2]))


def _concept(code: Code):
    import highdicom as hd

    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)


def read_source_series(
    source: DicomSeries | str | os.PathLike | Sequence[str], ijk_to_ras: np.ndarray, slices: int
) -> tuple[list, list[int]]:
    """The datasets (without pixel data) of the CT's DICOM series (checked, a folder's one series or the given
    files), in the K order of the volume whose IJK-to-RAS matrix is given, and the slice each one is (found
    from its position). Every slice has an instance, except where a series' gaps were resampled."""
    import pydicom

    if isinstance(source, DicomSeries):
        files, resampled = source.files, len(source.missing_mm)
    elif isinstance(source, (str, os.PathLike)):
        files, resampled = choose_series(source).files, 0
    else:
        files, resampled = source, 0
    datasets = [pydicom.dcmread(file, stop_before_pixels=True) for file in files]
    ras_to_ijk = np.linalg.inv(ijk_to_ras)
    by_slice: dict[int, object] = {}
    for dataset in datasets:
        lps = np.asarray(getattr(dataset, "ImagePositionPatient", None) or [np.nan] * 3, dtype=np.float64)
        k = (ras_to_ijk[:3, :3] @ (lps * [-1.0, -1.0, 1.0]) + ras_to_ijk[:3, 3])[2]
        if np.isfinite(k) and abs(k - round(k)) < 1e-2 and 0 <= round(k) < slices:
            by_slice.setdefault(int(round(k)), dataset)
    if len(by_slice) != len(datasets) or len(by_slice) + resampled != slices:
        raise InputError(
            f"the DICOM files are not the {slices} slices of the segmented volume (found {len(by_slice)} on its "
            "grid): segment the CT read from this series"
        )
    ks = sorted(by_slice)
    return [by_slice[k] for k in ks], ks


def _description(segments: Sequence[SegSegment], fractional: bool) -> str:
    text = ("SegVol probabilities: " if fractional else "SegVol: ") + ", ".join(s.name for s in segments)
    return text if len(text) <= 64 else text[:61] + "..."  # LO: 64 characters


def build_dicom_seg(
    source_datasets: Sequence,
    segments: Sequence[SegSegment],
    algorithm: SegAlgorithm,
    fractional: bool = False,
):
    """The highdicom Segmentation (BINARY, or FRACTIONAL from the segments' probabilities)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if not segments:
        raise InputError("nothing to write: no segment was produced")
    shape = segments[0].mask.shape
    first = source_datasets[0]
    if shape != (len(source_datasets), int(first.Rows), int(first.Columns)):
        raise InputError(
            f"the DICOM series has {len(source_datasets)} slices of {first.Columns}x{first.Rows} but the "
            f"segmentation is {shape[2]}x{shape[1]}x{shape[0]}: segment the CT read from this series"
        )
    identification = hd.AlgorithmIdentificationSequence(
        name=algorithm.name,
        family=codes.cid7162.ArtificialIntelligence,
        version=f"SegVolSlicer {__version__}",
        source=algorithm.source,
        parameters={"weights": algorithm.weights, "threshold": "0.5"},
    )
    descriptions = []
    for number, segment in enumerate(segments, start=1):
        look = look_for_segment(segment.name, segment.text)  # the codes and colour of the .seg.nrrd and Slicer
        category, type_, modifier = segment.codes or (look.term.category, look.term.type, look.term.modifier)
        made_by_segvol = segment.made_by_segvol
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=segment.name[:64],
            segmented_property_category=_concept(category),
            segmented_property_type=_concept(type_),
            algorithm_type=("SEMIAUTOMATIC" if segment.semiautomatic else "AUTOMATIC") if made_by_segvol else "MANUAL",
            algorithm_identification=identification if made_by_segvol else None,
        )
        if modifier is not None and modifier.value:  # left/right: highdicom takes no modifier; DICOM has it
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                _concept(modifier)
            ]
        description.RecommendedDisplayCIELabValue = list(hd.color.CIELabColor(*cielab_from_rgb(look.color)).value)
        descriptions.append(description)
    if fractional:
        if any(segment.probabilities is None for segment in segments):
            raise ValueError("a FRACTIONAL SEG needs every segment's probabilities")
        pixels = np.stack([np.clip(s.probabilities, 0.0, 1.0).astype(np.float32) for s in segments])
    else:
        pixels = np.stack([s.mask for s in segments]) != 0
    # (F, R, C, S) as highdicom takes it, over segment-major memory: each frame of a segment is contiguous
    pixels = pixels.transpose(1, 2, 3, 0)
    if not pixels.any():
        raise InputError("every segment is empty: there is nothing to write into a DICOM SEG")
    series_number = int(getattr(first, "SeriesNumber", None) or 0) + SERIES_NUMBER_OFFSET
    with _garbage_collection_paused():
        return hd.seg.Segmentation(
            source_images=list(source_datasets),
            pixel_array=pixels,
            segmentation_type="FRACTIONAL" if fractional else "BINARY",
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="SegVolSlicer",
            manufacturer_model_name=algorithm.name,
            software_versions=__version__,
            device_serial_number="none",
            max_fractional_value=MAX_FRACTIONAL_VALUE,
            series_description=_description(segments, fractional),
            content_label="SEGVOL",
            content_description=f"{algorithm.name} ({algorithm.weights})"[:64],
        )


@contextmanager
def _garbage_collection_paused() -> Iterator[None]:
    """highdicom makes a few small datasets per frame: with thousands of frames the cyclic garbage collector,
    rescanning them all again and again, takes most of the time (4x here). Paused for the build only."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def write_dicom_seg(
    path: str | os.PathLike,
    source: str | os.PathLike | Sequence[str],
    ijk_to_ras: np.ndarray,
    segments: Sequence[SegSegment],
    algorithm: SegAlgorithm,
    fractional: bool = False,
) -> None:
    """Write the SEG for the CT read from `source` (its checked DICOM series, a DICOM folder or its files)
    whose segmented volume has the given IJK-to-RAS matrix, atomically. The frames are the slices the series
    has instances of (a series whose gaps were resampled has none for the slices interpolated)."""
    if not segments:
        raise InputError("nothing to write: no segment was produced")
    datasets, ks = read_source_series(source, ijk_to_ras, segments[0].mask.shape[0])
    if len(ks) < segments[0].mask.shape[0]:
        segments = [
            replace(s, mask=s.mask[ks], probabilities=None if s.probabilities is None else s.probabilities[ks])
            for s in segments
        ]
    seg = build_dicom_seg(datasets, segments, algorithm, fractional)
    with atomic_output(path) as tmp:
        seg.save_as(tmp)


def segments_from_results(results, targets=None, probabilities: bool = False) -> list[SegSegment]:
    """Engine results as SEG segments; `targets` (the prompts) say which used clicks or a box."""
    prompted = {t.name: (t.points is not None or t.box is not None) for t in targets or ()}
    return [
        SegSegment(
            result.name,
            result.text,
            result.mask,
            prompted.get(result.name, False),
            getattr(result, "probabilities", None) if probabilities else None,
        )
        for result in results
    ]
