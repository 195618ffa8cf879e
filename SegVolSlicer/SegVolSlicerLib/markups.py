"""Slicer markups files (.mrk.json) in: clicks from point lists and strokes (open curves), a box from an ROI.

Coordinates are LPS unless a markup says RAS (Slicer's default file convention); the points come back in the
volume's IJK (prompts.Points), the ROI's corners in RAS.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .errors import InputError
from .geometry import lps_to_ras_points
from .prompts import Points, label_from_description


def _read_markups(path: str | os.PathLike) -> list[dict]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"markups file not found: {path}")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
        markups = content["markups"]
        if not isinstance(markups, list) or not markups:
            raise ValueError
        return markups
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise InputError(
            f"{path} is not a Slicer markups file (.mrk.json with a 'markups' list): save the "
            "points or ROI from Slicer as .mrk.json"
        ) from None


def _to_ras(markup: dict, points, path) -> np.ndarray:
    system = str(markup.get("coordinateSystem", "LPS")).upper()
    if system not in ("LPS", "RAS"):
        raise InputError(f"{path}: unknown coordinateSystem {system!r} (expected LPS or RAS)")
    points = np.asarray(points, dtype=np.float64)
    return lps_to_ras_points(points) if system == "LPS" else points


def _placed_points(markup: dict, path, force_label: int | None) -> tuple[list, list]:
    ras, labels = [], []
    for point in markup.get("controlPoints", []):
        if point.get("positionStatus", "defined") != "defined":
            continue
        try:
            position = [float(v) for v in point["position"]]
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{path}: a control point has no valid 'position'") from None
        ras.append(_to_ras(markup, position, path))
        labels.append(force_label if force_label is not None else label_from_description(point.get("description")))
    return ras, labels


def _is_stroke(markup: dict) -> bool:
    return str(markup.get("type", "")).lower() in ("curve", "opencurve")


def _check_clicks_markup(markup: dict, path) -> None:
    """Clicks come from point lists and open curves only: an ROI's centre or a line's ends are no clicks."""
    kind = str(markup.get("type", "Fiducial"))
    if kind.lower() in ("fiducial", "curve", "opencurve"):
        return
    hint = "it is a box: give it as --roi" if kind.upper() == "ROI" else "save the clicks as a point list"
    raise InputError(f"{path} holds a {kind} markup, not points or an open curve: {hint}")


def read_clicks(path: str | os.PathLike, ijk_to_ras, force_label: int | None = None) -> Points:
    """The clicks of a markups file: point lists' control points, and strokes (open curves) sampled along
    their length (Points.along_curve); a stroke is negative when its first point's description says so."""
    parts = []
    for markup in _read_markups(path):
        _check_clicks_markup(markup, path)
        ras, labels = _placed_points(markup, path, force_label)
        if ras and _is_stroke(markup):
            parts.append(Points.along_curve(ras, labels[0], ijk_to_ras))
        elif ras:
            parts.append(Points.from_ras(ras, labels, ijk_to_ras))
    if not parts:
        raise InputError(f"{path} contains no placed control points")
    return Points.concatenate(*parts)


def read_roi_corners(path: str | os.PathLike) -> np.ndarray:
    """The 8 RAS corners of the (possibly rotated) box ROI in the file."""
    rois = [m for m in _read_markups(path) if str(m.get("type", "")).upper() == "ROI"]
    if not rois:
        raise InputError(f"{path} holds no ROI markup: draw a box ROI in Slicer and save it as .mrk.json")
    roi = rois[0]
    try:
        centre = np.asarray(roi["center"], dtype=np.float64).reshape(3)
        size = np.asarray(roi["size"], dtype=np.float64).reshape(3)
        axes = np.asarray(roi.get("orientation", np.eye(3).flatten()), dtype=np.float64).reshape(3, 3)
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{path}: the ROI needs 'center', 'size' and 'orientation'") from None
    if np.any(size <= 0) or not np.all(np.isfinite(size)):
        raise InputError(f"{path}: the ROI has zero size {size.tolist()}: give it an extent along every axis")
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
    corners = centre + (signs * size / 2) @ axes.T  # orientation columns are the ROI axes
    return _to_ras(roi, corners, path)


def points_from_files(positive_or_tagged: str | None, negative: str | None, ijk_to_ras) -> Points | None:
    parts = []
    if positive_or_tagged:
        parts.append(read_clicks(positive_or_tagged, ijk_to_ras))
    if negative:
        parts.append(read_clicks(negative, ijk_to_ras, force_label=0))
    return Points.concatenate(*parts)
