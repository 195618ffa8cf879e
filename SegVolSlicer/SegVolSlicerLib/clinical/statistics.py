"""Statistics per segment: voxels, volume, CT intensity, bounding box and centroid, and the confidence.

Coordinates are millimetres in LPS for files (DICOM and the NIfTI/NRRD headers ITK writes are LPS) and in RAS
in Slicer; the `coordinates` column says which. The bounding box is that of the voxel centres, axis-aligned in
those coordinates; intensity SD is the population SD (ddof=0), as Slicer's Segment Statistics reports it.

    >>> import numpy as np
    >>> mask = np.zeros((2, 2, 2), np.uint8); mask[0, 0, :] = 1
    >>> s = segment_statistics("x", mask, np.arange(8.0).reshape(2, 2, 2), np.diag([2.0, 2.0, 2.0, 1.0]))
    >>> s.voxels, round(s.volume_ml, 3), s.hu_mean, s.centroid
    (2, 0.016, 0.5, (-1.0, 0.0, 0.0))
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..files import atomic_output
from ..geometry import LPS_TO_RAS
from .confidence import Confidence, result_confidence

FIELDS = (
    "segment",
    "voxels",
    "volume_ml",
    "hu_mean",
    "hu_sd",
    "hu_min",
    "hu_median",
    "hu_max",
    "coordinates",
    "bbox_min_x",
    "bbox_min_y",
    "bbox_min_z",
    "bbox_max_x",
    "bbox_max_y",
    "bbox_max_z",
    "centroid_x",
    "centroid_y",
    "centroid_z",
    "mean_probability",
    "uncertain_share",
    "low_confidence",
)
Triple = tuple[float, float, float]


@dataclass(frozen=True)
class SegmentStatistics:
    segment: str
    voxels: int
    volume_ml: float
    hu_mean: float | None  # None for an empty segment, as every value below
    hu_sd: float | None
    hu_min: float | None
    hu_median: float | None
    hu_max: float | None
    coordinates: str  # "LPS" or "RAS"
    bbox_min: Triple | None
    bbox_max: Triple | None
    centroid: Triple | None
    confidence: Confidence | None = None

    def row(self) -> dict:
        """A flat row (FIELDS); empty cells for values that do not exist."""
        row = {name: getattr(self, name) for name in ("segment", "voxels", "volume_ml", "coordinates")}
        for name in ("hu_mean", "hu_sd", "hu_min", "hu_median", "hu_max"):
            row[name] = getattr(self, name)
        for name in ("bbox_min", "bbox_max", "centroid"):
            values = getattr(self, name) or (None, None, None)
            row.update({f"{name}_{axis}": value for axis, value in zip("xyz", values)})
        confidence = self.confidence or Confidence(None, None)
        row.update(confidence.as_dict())
        row["low_confidence"] = None if self.confidence is None else self.confidence.low
        return row

    @classmethod
    def from_row(cls, row: dict) -> SegmentStatistics:
        """The inverse of row() (a server's JSON answer)."""

        def triple(name):
            values = [row.get(f"{name}_{axis}") for axis in "xyz"]
            return None if values[0] is None else tuple(float(v) for v in values)

        confidence = Confidence.from_dict(row) if row.get("low_confidence") is not None else None
        hu = {name: row.get(name) for name in ("hu_mean", "hu_sd", "hu_min", "hu_median", "hu_max")}
        return cls(
            str(row["segment"]),
            int(row["voxels"]),
            float(row["volume_ml"]),
            **hu,
            coordinates=str(row["coordinates"]),
            bbox_min=triple("bbox_min"),
            bbox_max=triple("bbox_max"),
            centroid=triple("centroid"),
            confidence=confidence,
        )


def segment_statistics(
    name: str,
    mask: np.ndarray,
    intensities: np.ndarray,
    ijk_to_ras: np.ndarray,
    confidence: Confidence | None = None,
    coordinates: str = "LPS",
) -> SegmentStatistics:
    """The statistics of one (K, J, I) mask over the CT `intensities` on the same grid."""
    if coordinates not in ("LPS", "RAS"):
        raise ValueError(f"coordinates must be LPS or RAS, got {coordinates!r}")
    inside = mask > 0
    voxels = int(np.count_nonzero(inside))
    volume_ml = voxels * abs(float(np.linalg.det(ijk_to_ras[:3, :3]))) / 1000.0
    if not voxels:
        empty = dict(hu_mean=None, hu_sd=None, hu_min=None, hu_median=None, hu_max=None)
        return SegmentStatistics(name, 0, 0.0, **empty, coordinates=coordinates, bbox_min=None, bbox_max=None,
                                 centroid=None, confidence=confidence)  # fmt: skip
    values = intensities[inside].astype(np.float64)
    kji = np.argwhere(inside).astype(np.float64)
    to_space = ijk_to_ras if coordinates == "RAS" else LPS_TO_RAS @ ijk_to_ras  # LPS_TO_RAS is its own inverse
    points = kji[:, ::-1] @ to_space[:3, :3].T + to_space[:3, 3]
    return SegmentStatistics(
        name,
        voxels,
        volume_ml,
        hu_mean=float(values.mean()),
        hu_sd=float(values.std()),
        hu_min=float(values.min()),
        hu_median=float(np.median(values)),
        hu_max=float(values.max()),
        coordinates=coordinates,
        bbox_min=_triple(points.min(axis=0)),
        bbox_max=_triple(points.max(axis=0)),
        centroid=_triple(points.mean(axis=0)),
        confidence=confidence,
    )


def _triple(values) -> Triple:
    return tuple(float(v) for v in values)


def result_statistics(result, intensities: np.ndarray, ijk_to_ras: np.ndarray, coordinates: str = "LPS"):
    """The statistics of an engine result (SegmentationResult or RemoteResult) with its confidence."""
    confidence = result_confidence(result)
    return segment_statistics(result.name, result.mask, intensities, ijk_to_ras, confidence, coordinates)


def results_statistics(results, volume, coordinates: str = "LPS") -> list[SegmentStatistics]:
    """The statistics of engine results on `volume` (imageio.Volume)."""
    return [result_statistics(result, volume.array, volume.ijk_to_ras, coordinates) for result in results]


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def statistics_csv(rows: Iterable[dict], first_fields: Sequence[str] = ()) -> str:
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=[*first_fields, *FIELDS], lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: _cell(value) for key, value in row.items()} for row in rows)
    return table.getvalue()


def check_statistics_path(path: str | os.PathLike) -> None:
    """Statistics go to a .csv or a .json file (checked before the model runs, and again when written)."""
    if Path(path).suffix.lower() not in (".csv", ".json"):
        raise InputError(f"--stats {path}: give a .csv or .json file name")


def write_statistics(path: str | os.PathLike, statistics: Sequence[SegmentStatistics]) -> None:
    """`.csv` (one row per segment) or `.json` (a list of objects, null for missing values), atomically."""
    path = Path(path).expanduser()
    check_statistics_path(path)
    rows = [s.row() for s in statistics]
    text = statistics_csv(rows) if path.suffix.lower() == ".csv" else json.dumps(rows, indent=1) + "\n"
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def combine_statistics_files(files: Sequence[tuple[str, Path]], path: Path) -> None:
    """One table of every case's statistics: (case id, its per-case stats .csv) -> `path` with a `case` column."""
    rows = []
    for case_id, file in files:
        with open(file, encoding="utf-8", newline="") as table:
            rows += [{"case": case_id, **row} for row in csv.DictReader(table)]
    with atomic_output(path) as tmp:
        tmp.write_text(statistics_csv(rows, ("case",)), encoding="utf-8")
