"""DICOM series checked the way a PACS viewer checks them, before the model runs.

A folder may hold several series (a scout, other kernels, a dose report): they are listed and one is picked by
its SeriesInstanceUID. The picked series' slices are sorted by their position along the slice normal, and must
share one orientation, be stacked along their normal (no gantry tilt) and be evenly spaced; a gap names the
missing positions and is refused unless the caller allows resampling. A series that is not CT is a warning.
GDCM (through SimpleITK) finds the series, reads the headers and the pixels: no DICOM library beyond
SimpleITK is needed to read a CT (pydicom and highdicom only to write a DICOM SEG).

    series = read_series("CT/", uid=None, allow_gaps=False)  # InputError when anything is wrong
    series.image, series.files, series.warnings
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError

# Positions are written with a few decimals: slices within this many mm (or 1 % of the spacing) of their
# place on an even grid are on it.
POSITION_TOLERANCE_MM = 0.01
SPACING_TOLERANCE = 0.01
ORIENTATION_TOLERANCE = 1e-3  # direction cosines
TILT_TOLERANCE_DEGREES = 0.05
_HEADER_TAGS = {
    "SeriesNumber": "0020|0011",
    "SeriesDescription": "0008|103e",
    "Modality": "0008|0060",
    "ImagePositionPatient": "0020|0032",
    "ImageOrientationPatient": "0020|0037",
}


@dataclass(frozen=True)
class SeriesSummary:
    """One series of a folder as a PACS lists it."""

    uid: str
    number: str
    description: str
    modality: str
    files: tuple[str, ...]

    def line(self) -> str:
        number = f"#{self.number}" if self.number else "#-"
        description = self.description or "(no description)"
        return f"{self.uid}  {number}  {self.modality or '?'}  {len(self.files)} slice(s)  {description}"


@dataclass(frozen=True)
class DicomSeries:
    """A checked series: its volume on an even grid, the files in slice order and where each lies on it."""

    uid: str
    modality: str
    files: tuple[str, ...]  # the series' instances, sorted along the slice normal (the volume's K order)
    slice_of_file: tuple[int, ...]  # the volume slice (K) each file is; consecutive unless gaps were resampled
    missing_mm: tuple[float, ...]  # positions along the normal the series has no slice at (resampled)
    image: sitk.Image
    warnings: tuple[str, ...] = ()


def _quiet_itk():
    """ITK prints its own multi-line warnings (no series, uneven spacing) to stderr: the checks here say it."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    return shown


def _last_line(error: RuntimeError) -> str:
    """What an ITK exception says went wrong: its last line (the first ones give the source file)."""
    lines = str(error).strip().splitlines()
    return lines[-1][:160] if lines else ""


def _headers(files: Sequence[str]) -> list[dict[str, str]]:
    """The attributes of _HEADER_TAGS of each file, as text ("" when absent; values of several parts "a\\b")."""
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    headers = []
    for file in files:
        reader.SetFileName(str(file))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            raise InputError(f"cannot read the DICOM header of {file}: give a folder of readable DICOM files") from None
        headers.append(
            {
                name: reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else ""
                for name, tag in _HEADER_TAGS.items()
            }
        )
    return headers


def find_series(folder: str | os.PathLike) -> list[SeriesSummary]:
    """The image series of a folder (not its subfolders), largest first."""
    folder = Path(folder).expanduser()
    shown = _quiet_itk()
    try:
        uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        found = [(uid, sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in uids]
    except RuntimeError as error:
        raise InputError(f"cannot read the DICOM folder {folder}: {_last_line(error)}") from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    summaries = []
    for uid, files in found:
        first = _headers(files[:1])[0]
        summaries.append(
            SeriesSummary(uid, first["SeriesNumber"], first["SeriesDescription"], first["Modality"], files)
        )
    return sorted(summaries, key=lambda s: (-len(s.files), s.number, s.uid))


def series_listing(series: Sequence[SeriesSummary]) -> str:
    """The series as lines: UID, number, modality, slice count, description."""
    return "\n".join("  " + summary.line() for summary in series)


def choose_series(folder: str | os.PathLike, uid: str | None = None) -> SeriesSummary:
    """The folder's one series, or the one with this SeriesInstanceUID; refused with the list otherwise."""
    folder = Path(folder).expanduser()
    series = find_series(folder)
    if not series:
        raise InputError(
            f"{folder} is a folder without DICOM images: give a CT file (.nii.gz, .nrrd, .mha) "
            "or a folder holding one DICOM series"
        )
    if uid is not None:
        chosen = [summary for summary in series if summary.uid == uid.strip()]
        if not chosen:
            raise InputError(f"{folder} holds no DICOM series {uid}; its series are:\n{series_listing(series)}")
        return chosen[0]
    if len(series) > 1:
        raise InputError(
            f"{folder} holds {len(series)} DICOM series: give --series UID to pick one (or put each series in "
            f"its own folder):\n{series_listing(series)}"
        )
    return series[0]


def _vector(header: dict[str, str], name: str, size: int, file: str) -> np.ndarray:
    try:
        value = np.asarray([float(v) for v in header[name].split("\\")], dtype=np.float64)
    except ValueError:
        value = np.zeros(0)
    if value.size != size or not np.all(np.isfinite(value)):
        raise InputError(
            f"{file} has no valid {name}: its slices cannot be placed in space (not a CT image series); "
            "give a CT series or a CT volume file"
        )
    return value


def _mm(values) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


@dataclass(frozen=True)
class _Stack:
    files: list[str]  # in slice order
    slice_of_file: list[int]
    spacing_mm: float  # of the even grid
    missing_mm: list[float]
    warnings: list[str]


def _geometry(summary: SeriesSummary, allow_gaps: bool) -> _Stack:
    """The slices sorted and placed on an even grid, or an InputError saying what is wrong."""
    if len(summary.files) == 1:  # one file: a multi-frame image (ITK places its frames) or one slice (refused later)
        return _Stack(list(summary.files), [0], 0.0, [], [])
    headers = _headers(summary.files)
    label = f"DICOM series {summary.uid}"
    orientations = np.stack([_vector(h, "ImageOrientationPatient", 6, f) for h, f in zip(headers, summary.files)])
    distinct = [orientations[0]]
    for orientation in orientations[1:]:
        if not any(np.allclose(orientation, seen, atol=ORIENTATION_TOLERANCE) for seen in distinct):
            distinct.append(orientation)
    if len(distinct) > 1:
        raise InputError(
            f"{label} has slices in {len(distinct)} orientations (a localizer or a reformatted stack mixed in): "
            "a volume needs one; put the axial (or one) stack in a folder of its own"
        )
    row, column = orientations[0][:3], orientations[0][3:]
    normal = np.cross(row, column)
    positions = np.stack([_vector(h, "ImagePositionPatient", 3, f) for h, f in zip(headers, summary.files)])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    files, along, positions = [summary.files[i] for i in order], along[order], positions[order]
    steps = np.diff(along)
    duplicates = np.flatnonzero(steps < POSITION_TOLERANCE_MM)
    if duplicates.size:
        raise InputError(
            f"{label} has {duplicates.size + 1} or more slices at the same position ({_mm(along[duplicates])} mm "
            "along the slice normal): it holds several acquisitions or duplicate files; keep one of each"
        )
    if len(files) > 1:
        travel = positions[-1] - positions[0]
        tilt = np.degrees(np.arccos(np.clip(abs(travel @ normal) / np.linalg.norm(travel), 0.0, 1.0)))
        if tilt > TILT_TOLERANCE_DEGREES:
            raise InputError(
                f"{label} was acquired with a gantry tilt of {tilt:.1f} degrees (its slices are not stacked along "
                "their normal), which would give a sheared volume: resample it first (3D Slicer's DICOM module "
                "with acquisition geometry regularization, or dcm2niix) and give the resulting volume"
            )
    if len(files) < 3:
        return _Stack(files, list(range(len(files))), float(steps[0]) if len(steps) else 0.0, [], [])
    spacing = float(np.median(steps))
    tolerance = max(POSITION_TOLERANCE_MM, SPACING_TOLERANCE * spacing)
    grid = np.rint((along - along[0]) / spacing).astype(int)
    off_grid = np.abs(along - along[0] - grid * spacing) > tolerance
    if off_grid.any():
        problem = (
            f"its slice spacing varies from {steps.min():.3f} to {steps.max():.3f} mm (not one spacing, "
            f"{off_grid.sum()} slice(s) off an even {spacing:.3f} mm grid)"
        )
        missing = []
    else:
        missing = [float(along[0] + k * spacing) for k in sorted(set(range(grid[-1] + 1)) - set(grid.tolist()))]
        if not missing:
            return _Stack(files, grid.tolist(), spacing, [], [])
        problem = (
            f"{len(missing)} slice(s) are missing at {_mm(missing)} mm along the slice normal "
            f"(spacing {spacing:.3f} mm)"
        )
    if not allow_gaps:
        raise InputError(
            f"{label}: {problem}; read as is, the volume would be stretched over the gap. Give the complete "
            "series, or --allow-gaps to resample it onto an even grid (the missing slices interpolated)"
        )
    if off_grid.any():
        raise InputError(
            f"{label}: {problem}; --allow-gaps fills missing slices of an even series only: resample it first "
            "(3D Slicer's DICOM module with acquisition geometry regularization, or dcm2niix)"
        )
    warning = (
        f"{label}: {problem}; resampled onto an even grid as --allow-gaps asked: the missing slices are "
        "interpolated from their neighbours, so masks and statistics there are estimates"
    )
    return _Stack(files, grid.tolist(), float(along[-1] - along[0]) / grid[-1], missing, [warning])


def _read_pixels(files: Sequence[str]) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(files))
    shown = _quiet_itk()
    try:
        return reader.Execute()
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _fill_gaps(image: sitk.Image, slice_of_file: Sequence[int], spacing_mm: float) -> sitk.Image:
    """The acquired slices placed on their grid slices, each missing slice interpolated linearly between the
    acquired slices around it; the geometry is the first slice's with the series' even spacing."""
    acquired = sitk.GetArrayFromImage(image)
    grid = np.asarray(slice_of_file)
    targets = np.arange(grid[-1] + 1)
    after = np.clip(np.searchsorted(grid, targets), 1, len(grid) - 1)
    weight = ((targets - grid[after - 1]) / (grid[after] - grid[after - 1])).reshape(-1, 1, 1)
    filled = (1 - weight) * acquired[after - 1] + weight * acquired[after]
    if np.issubdtype(acquired.dtype, np.integer):
        filled = np.rint(filled)
    result = sitk.GetImageFromArray(filled.astype(acquired.dtype))
    result.SetOrigin(image.GetOrigin())
    result.SetSpacing((*image.GetSpacing()[:2], spacing_mm))
    result.SetDirection(image.GetDirection())
    return result


def read_series(folder: str | os.PathLike, uid: str | None = None, allow_gaps: bool = False) -> DicomSeries:
    """The folder's (or the picked) series, checked and read; see the module's description."""
    summary = choose_series(folder, uid)
    warnings = []
    if summary.modality != "CT":
        warnings.append(
            f"DICOM series {summary.uid} is {summary.modality or 'of no stated modality'}, not CT: SegVol "
            "was trained on CT, its masks on other images are unreliable"
        )
    stack = _geometry(summary, allow_gaps)
    try:
        image = _read_pixels(stack.files)
    except RuntimeError as error:
        raise InputError(f"cannot read DICOM series {summary.uid}: {_last_line(error)}") from None
    if stack.missing_mm:
        image = _fill_gaps(image, stack.slice_of_file, stack.spacing_mm)
    return DicomSeries(
        summary.uid,
        summary.modality,
        tuple(stack.files),
        tuple(stack.slice_of_file),
        tuple(stack.missing_mm),
        image,
        tuple(warnings + stack.warnings),
    )
