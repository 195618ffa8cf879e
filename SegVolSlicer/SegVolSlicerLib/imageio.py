"""Files in and out: CT volumes (NIfTI, NRRD, MHA, DICOM folders) and segmentations (markups: markups.py).

Everything goes through SimpleITK. ITK's physical space is LPS and Slicer's is RAS, so
IJK-to-RAS = diag(-1, -1, 1) @ IJK-to-LPS; arrays are (K, J, I) as `sitk.GetArrayFromImage` and
`slicer.util.arrayFromVolume` both give them. Every file is written atomically (files.atomic_output).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .dicom_series import DicomSeries, read_series
from .errors import InputError
from .files import atomic_output
from .geometry import LPS_TO_RAS, transform_points
from .volume_checks import check_volume


@dataclass
class Volume:
    array: np.ndarray  # (K, J, I)
    ijk_to_ras: np.ndarray  # (4, 4)
    reference: sitk.Image  # the image as read: output files copy its geometry
    dicom: DicomSeries | None = None  # the checked DICOM series it was read from
    warnings: tuple[str, ...] = ()  # what the user should know about the input (e.g. resampled gaps)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)


def ijk_to_ras_of(image: sitk.Image) -> np.ndarray:
    dimension = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dimension, dimension)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction[:3, :3] @ np.diag(image.GetSpacing()[:3])
    ijk_to_lps[:3, 3] = image.GetOrigin()[:3]
    return LPS_TO_RAS @ ijk_to_lps


def _itk_message(error: RuntimeError) -> str:
    """The line of an ITK exception that says what went wrong: its last (the first ones give the source file)."""
    lines = str(error).strip().splitlines()
    return lines[-1][:160] if lines else ""


def read_image(path: str | os.PathLike) -> sitk.Image:
    """A volume file, or a folder's one DICOM series (read_volume checks a series and says what it found)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"image not found: {path}")
    try:
        return read_series(path).image if path.is_dir() else sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(
            f"cannot read image {path}: not a readable NIfTI/NRRD/MHA file or DICOM folder ({_itk_message(error)})"
        ) from None


def read_volume(path: str | os.PathLike, series: str | None = None, allow_gaps: bool = False) -> Volume:
    """A 3-D scalar volume with its IJK-to-RAS matrix; a DICOM folder's series checked first (dicom_series):
    `series` picks one of several by its SeriesInstanceUID, `allow_gaps` resamples missing slices."""
    path = Path(path).expanduser()
    if series is not None and not path.is_dir():
        raise InputError(f"--series picks a series of a DICOM folder, and {path} is not a folder: leave it out")
    dicom = read_series(path, series, allow_gaps) if path.is_dir() else None
    image = dicom.image if dicom is not None else read_image(path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path} has {image.GetNumberOfComponentsPerPixel()} components per voxel: give a single-channel CT volume"
        )
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    size = "x".join(map(str, image.GetSize()))
    if image.GetDimension() > 3:
        raise InputError(
            f"{path} is a {image.GetDimension()}-D image of size {size}: give one 3-D CT volume (not a time series)"
        )
    if image.GetDimension() < 3 or min(image.GetSize()) < 2:
        raise InputError(f"{path} is a 2-D image of size {size}: SegVol needs a 3-D CT volume (several slices)")
    warnings = dicom.warnings if dicom is not None else ()
    return Volume(sitk.GetArrayFromImage(image), ijk_to_ras_of(image), image, dicom, warnings)


def read_ct(path: str | os.PathLike, series: str | None = None, allow_gaps: bool = False) -> Volume:
    """The CT, checked before the model runs (seconds) so that a bad volume fails at once."""
    volume = read_volume(path, series, allow_gaps)
    check_volume(volume.array)
    return volume


# --- output ---


def _write(image: sitk.Image, path: Path) -> None:
    with atomic_output(path) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=True)
        except RuntimeError as error:
            raise InputError(f"cannot write {path}: {_itk_message(error)}") from None


def _on_reference(array: np.ndarray, reference: sitk.Image, is_vector: bool = False) -> sitk.Image:
    image = sitk.GetImageFromArray(array, isVector=is_vector)
    image.SetOrigin(reference.GetOrigin())
    image.SetSpacing(reference.GetSpacing())
    image.SetDirection(reference.GetDirection())
    return image


def write_mask(path: str | os.PathLike, mask: np.ndarray, reference: sitk.Image) -> None:
    """A uint8 mask on the reference image's grid (any ITK format, e.g. .nii.gz)."""
    _write(_on_reference(np.ascontiguousarray(mask, dtype=np.uint8), reference), Path(path))


def write_image_on(
    path: str | os.PathLike,
    array: np.ndarray,
    reference: sitk.Image,
    is_vector: bool = False,
    metadata: dict[str, str] | None = None,
) -> None:
    """Any (K, J, I[, C]) array on the reference image's grid, with header fields."""
    image = _on_reference(np.ascontiguousarray(array), reference, is_vector)
    for key, value in (metadata or {}).items():
        image.SetMetaData(key, value)
    _write(image, Path(path))


@dataclass
class Segment:
    name: str
    mask: np.ndarray  # (K, J, I) 0/1
    colour: tuple[float, float, float]  # RGB 0..1
    fields: dict[str, str] = field(default_factory=dict)  # other Segment{N}_* header fields to keep (ID, Tags...)

    @classmethod
    def for_target(cls, name: str, text: str | None, mask: np.ndarray, tags: dict[str, str] | None = None) -> Segment:
        """A result as the Slicer module shows it: the colour and terminology codes of
        terminology.look_for_segment (as in a DICOM SEG); `tags`: more segment tags (e.g. the confidence)."""
        from .terminology import TERMINOLOGY_ENTRY_TAG, look_for_segment

        look = look_for_segment(name, text)
        all_tags = {"Segmentation.Status": "completed", TERMINOLOGY_ENTRY_TAG: look.terminology_entry, **(tags or {})}
        return cls(name, mask, tuple(look.color), {"Tags": _tags_text(all_tags)})


def is_segmentation_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith((".seg.nrrd", ".seg.nhdr"))


def _assign_layers(segments: Sequence[Segment]) -> list[tuple[int, int]]:
    """(layer, label value) per segment: segments share a layer while they do not overlap (as Slicer does)."""
    layers: list[np.ndarray] = []
    placement = []
    for segment in segments:
        mask = segment.mask > 0
        for index, occupied in enumerate(layers):
            if not np.any(occupied & mask):
                occupied |= mask
                placement.append((index, sum(1 for layer, _ in placement if layer == index) + 1))
                break
        else:
            layers.append(mask.copy())
            placement.append((len(layers) - 1, 1))
    return placement


def _extent(mask: np.ndarray) -> str:
    """Slicer's Segment{N}_Extent: i0 i1 j0 j1 k0 k1 of the non-empty voxels ("0 -1 ..." when empty)."""
    if not mask.any():
        return "0 -1 0 -1 0 -1"
    bounds = []
    for axis in (2, 1, 0):  # i, j, k
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        bounds += [int(hits[0]), int(hits[-1])]
    return " ".join(map(str, bounds))


def write_segmentation(path: str | os.PathLike, segments: Sequence[Segment], reference: sitk.Image) -> list[str]:
    """Write the segments on the reference grid; returns warnings.

    `.seg.nrrd`: a Slicer segmentation, one named coloured segment per entry (overlapping segments go to
    separate layers, as Slicer stores them). Any other ending (.nii.gz, .nrrd, .mha): a labelmap with value
    n for the n-th segment, where a later segment wins a voxel claimed by several.
    """
    path = Path(path).expanduser()
    if not segments:
        raise InputError("nothing to write: no segment was produced")
    if not is_segmentation_path(path):
        labelmap = np.zeros(segments[0].mask.shape, dtype=np.uint8 if len(segments) < 256 else np.uint16)
        warnings = []
        for value, segment in enumerate(segments, start=1):
            overlap = int(np.count_nonzero(labelmap[segment.mask > 0]))
            if overlap:
                warnings.append(
                    f"'{segment.name}' overlaps earlier segments on {overlap} voxel(s); the labelmap "
                    f"keeps '{segment.name}' there (write a .seg.nrrd to keep overlaps)"
                )
            labelmap[segment.mask > 0] = value
        _write(_on_reference(labelmap, reference), path)
        return warnings
    placement = _assign_layers(segments)
    layer_count = max(layer for layer, _ in placement) + 1
    layers = np.zeros((*segments[0].mask.shape, layer_count), dtype=np.uint8)
    for segment, (layer, value) in zip(segments, placement):
        layers[..., layer][segment.mask > 0] = value
    image = _on_reference(layers[..., 0] if layer_count == 1 else layers, reference, is_vector=layer_count > 1)
    for number, (segment, (layer, value)) in enumerate(zip(segments, placement)):
        fields = {
            "ID": f"Segment_{number + 1}",
            "NameAutoGenerated": "0",
            "ColorAutoGenerated": "0",
            "Tags": "Segmentation.Status:completed|",
            **segment.fields,
            "Name": segment.name,
            "Color": " ".join(f"{c:.6g}" for c in segment.colour),
            "LabelValue": str(value),
            "Layer": str(layer),
            "Extent": _extent(segment.mask > 0),
        }
        for key, value_text in fields.items():
            image.SetMetaData(f"Segment{number}_{key}", value_text)
    image.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
    image.SetMetaData("Segmentation_ContainedRepresentationNames", "Binary labelmap|")
    image.SetMetaData("Segmentation_ReferenceImageExtentOffset", "0 0 0")
    _write(image, path)
    return []


def read_segmentation(path: str | os.PathLike, volume: Volume) -> list[Segment]:
    """The segments of a Slicer .seg.nrrd on the volume's grid (the file may cover only part of it, as Slicer
    saves cropped segmentations, but its voxels must be the volume's)."""
    image = read_image(path)
    header = {key: image.GetMetaData(key) for key in image.GetMetaDataKeys()}
    file_ijk_to_ras = ijk_to_ras_of(image)
    offset = transform_points(np.linalg.inv(volume.ijk_to_ras), file_ijk_to_ras[:3, 3])
    if not np.allclose(file_ijk_to_ras[:3, :3], volume.ijk_to_ras[:3, :3], atol=1e-4) or not np.allclose(
        offset, np.rint(offset), atol=1e-3
    ):
        raise InputError(f"{path} exists but is not on the grid of this image: choose another output name")
    array = sitk.GetArrayFromImage(image)
    layers = array if array.ndim == 4 else array[..., None]
    start = np.rint(offset[::-1]).astype(int)  # where the file's voxel (0,0,0) lies, as (k, j, i)
    low, high = np.maximum(start, 0), np.minimum(start + layers.shape[:3], volume.shape)
    inside = tuple(slice(a, b) for a, b in zip(low, high))
    in_file = tuple(slice(a - o, b - o) for a, b, o in zip(low, high, start))
    segments = []
    for number in itertools.count():
        prefix = f"Segment{number}_"
        if prefix + "Name" not in header:
            return segments
        layer, value = int(header.get(prefix + "Layer", 0)), int(header.get(prefix + "LabelValue", 1))
        mask = np.zeros(volume.shape, dtype=np.uint8)
        if np.all(high > low):
            mask[inside] = layers[..., layer][in_file] == value
        colour = tuple(float(c) for c in header.get(prefix + "Color", "0.5 0.5 0.5").split()[:3])
        kept = {
            k: header[prefix + k]
            for k in ("ID", "Tags", "NameAutoGenerated", "ColorAutoGenerated")
            if prefix + k in header
        }
        segments.append(Segment(header[prefix + "Name"], mask, colour, kept))


def _tags(text: str) -> dict[str, str]:
    """Slicer's "key:value|key:value|" segment tags as a dict (values may contain ':')."""
    return dict(item.split(":", 1) for item in text.split("|") if ":" in item)


def _tags_text(tags: dict[str, str]) -> str:
    """The inverse of `_tags`."""
    return "".join(f"{key}:{value}|" for key, value in tags.items())


def merge_segments(existing: Sequence[Segment], new: Sequence[Segment]) -> list[Segment]:
    """`existing` with same-named segments replaced in place by `new` ones (keeping their ID and tags, except
    SegVol's own tags such as the confidence, which describe the new mask), the other new segments appended."""
    by_name = {segment.name: segment for segment in new}
    merged = []
    for old in existing:
        if old.name in by_name:
            replacement = by_name.pop(old.name)
            fields = dict(old.fields)
            ours = {k: v for k, v in _tags(replacement.fields.get("Tags", "")).items() if k.startswith("SegVol.")}
            if ours:
                tags = {**_tags(fields.get("Tags", "")), **ours}
                fields["Tags"] = _tags_text(tags)
            merged.append(Segment(replacement.name, replacement.mask, replacement.colour, fields))
        else:
            merged.append(old)
    return merged + [segment for segment in new if segment.name in by_name]


def read_label_volume(path: str | os.PathLike, reference: Volume) -> np.ndarray:
    """A label image that must share the CT's voxel grid: (K, J, I) integer array."""
    labels = read_volume(path)
    if labels.shape != reference.shape:
        raise InputError(
            f"the label image {path} has {labels.shape[2]}x{labels.shape[1]}x{labels.shape[0]} voxels but "
            f"the CT has {reference.shape[2]}x{reference.shape[1]}x{reference.shape[0]}: give the label "
            "map of this CT"
        )
    corner = transform_points(labels.ijk_to_ras, np.asarray(labels.shape[::-1]) - 1.0)
    if not np.allclose(labels.ijk_to_ras[:3, 3], reference.ijk_to_ras[:3, 3], atol=1e-2) or not np.allclose(
        corner, transform_points(reference.ijk_to_ras, np.asarray(reference.shape[::-1]) - 1.0), atol=1e-2
    ):
        raise InputError(
            f"the label image {path} is not on the CT's grid (different origin, spacing or "
            "orientation): resample it onto the CT first"
        )
    if not np.issubdtype(labels.array.dtype, np.integer):
        rounded = np.rint(labels.array)
        if not np.array_equal(rounded, labels.array):
            raise InputError(f"the label image {path} has non-integer values: give a label map")
        return rounded.astype(np.int64)
    return labels.array
