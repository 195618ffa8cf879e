"""User prompts in voxel (IJK) coordinates of the input volume: points, a box, a text, and a target.

A `Target` is one thing to segment: a name (the segment's name) and any mix of a text prompt, clicks and a
box. Prompts given in patient RAS millimetres (Slicer markups) are converted with the volume's IJK-to-RAS
matrix by `Points.from_ras` / `Box.from_ras_corners`; the engine then maps IJK into the model's spaces
(inference/model_space.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .geometry import ras_to_ijk_points

POSITIVE, NEGATIVE = 1, 0
# A stroke (a curve drawn with the positive or negative tool) becomes clicks this far apart, at most this many.
STROKE_SPACING_MM, STROKE_MAX_POINTS = 5.0, 20
_NEGATIVE_WORDS = ("negative", "neg", "-", "0", "background", "exclude")
_POSITIVE_WORDS = ("", "positive", "pos", "+", "1", "foreground", "include")


def label_from_description(description: str | None) -> int:
    """Polarity of a markups control point from its description: empty or "positive" -> 1, "negative" -> 0.

    This is how SegVolSlicer tags clicks in Slicer (a point with an empty description counts as positive).
    """
    word = (description or "").strip().lower()
    if word in _POSITIVE_WORDS:
        return POSITIVE
    if word in _NEGATIVE_WORDS:
        return NEGATIVE
    raise InputError(
        f"point description {description!r} is neither positive nor negative: leave it empty "
        "or write 'positive' for a positive point, write 'negative' for a negative one"
    )


@dataclass(frozen=True, eq=False)
class Points:
    """Clicks: ijk (N,3) float voxel coordinates (i,j,k) of the volume; labels (N,) 1 positive / 0 negative."""

    ijk: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        ijk = np.asarray(self.ijk, dtype=np.float64).reshape(-1, 3) if np.size(self.ijk) else np.zeros((0, 3))
        labels = np.asarray(self.labels).reshape(-1)
        if len(ijk) != len(labels):
            raise InputError(f"{len(ijk)} point(s) but {len(labels)} label(s): give one label per point")
        if not np.all(np.isfinite(ijk)):
            raise InputError("a point has a non-finite coordinate")
        if not np.all(np.isin(labels, (POSITIVE, NEGATIVE))):
            raise InputError("point labels must be 1 (positive) or 0 (negative)")
        object.__setattr__(self, "ijk", ijk)
        object.__setattr__(self, "labels", labels.astype(np.int64))

    @classmethod
    def from_ras(cls, ras, labels, ijk_to_ras) -> Points:
        return cls(ras_to_ijk_points(ijk_to_ras, np.asarray(ras, dtype=np.float64).reshape(-1, 3)), labels)

    @classmethod
    def along_curve(
        cls,
        ras,
        label: int,
        ijk_to_ras,
        spacing_mm: float = STROKE_SPACING_MM,
        max_points: int = STROKE_MAX_POINTS,
    ) -> Points:
        """Clicks of one polarity along a stroke, the polyline through `ras` (N,3 in mm): evenly spread over
        its length, both ends included, at most `spacing_mm` apart unless that takes more than
        `max_points` (then `max_points` of them); a stroke without length is one click.

        >>> Points.along_curve([[0, 0, 0], [0, 0, 10]], 1, np.eye(4), spacing_mm=4).ijk[:, 2].tolist()
        [0.0, 3.3333333333333335, 6.666666666666667, 10.0]
        """
        if not spacing_mm > 0 or max_points < 1:
            raise InputError("a stroke needs a spacing above 0 mm and room for at least one point")
        ras = np.asarray(ras, dtype=np.float64).reshape(-1, 3)
        if not len(ras):
            raise InputError("a stroke needs at least one placed point")
        steps = np.linalg.norm(np.diff(ras, axis=0), axis=1)
        ras = ras[np.concatenate([[True], steps > 0])]  # repeated points would stall the interpolation
        along = np.concatenate([[0.0], np.cumsum(steps[steps > 0])])
        count = min(int(max_points), int(np.ceil(along[-1] / spacing_mm - 1e-9)) + 1)
        at = np.linspace(0.0, along[-1], count)
        sampled = np.stack([np.interp(at, along, ras[:, axis]) for axis in range(3)], axis=1)
        return cls.from_ras(sampled, np.full(count, label), ijk_to_ras)

    @classmethod
    def concatenate(cls, *parts: Points | None) -> Points | None:
        parts = [p for p in parts if p is not None and len(p)]
        if not parts:
            return None
        return cls(np.concatenate([p.ijk for p in parts]), np.concatenate([p.labels for p in parts]))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def has_positive(self) -> bool:
        return bool(np.any(self.labels == POSITIVE))

    def check_inside(self, shape_kji) -> None:
        """Every point must lie on a voxel of the volume (within half a voxel of the outer voxel centres)."""
        upper = np.asarray(shape_kji[::-1], dtype=np.float64) - 0.5
        outside = np.any((self.ijk < -0.5) | (self.ijk >= upper), axis=1)
        if np.any(outside):
            first = self.ijk[np.argmax(outside)]
            raise InputError(
                f"{int(outside.sum())} point(s) lie outside the volume, e.g. IJK "
                f"({first[0]:.1f}, {first[1]:.1f}, {first[2]:.1f}) while the volume has "
                f"{shape_kji[2]} x {shape_kji[1]} x {shape_kji[0]} voxels: place the points on the image"
            )


@dataclass(frozen=True)
class Box:
    """An axis-aligned box of voxels: inclusive IJK indices (i0,j0,k0) .. (i1,j1,k1)."""

    ijk_min: tuple[int, int, int]
    ijk_max: tuple[int, int, int]

    def __post_init__(self):
        try:
            low = tuple(int(round(float(v))) for v in self.ijk_min)
            high = tuple(int(round(float(v))) for v in self.ijk_max)
        except (TypeError, ValueError):
            raise InputError("box corners must be numbers") from None
        if len(low) != 3 or len(high) != 3:
            raise InputError("a box needs three minimum and three maximum indices (i0 j0 k0 i1 j1 k1)")
        if any(h < lo for lo, h in zip(low, high)):
            raise InputError(f"the box {low} .. {high} is empty: every maximum index must be >= the minimum")
        object.__setattr__(self, "ijk_min", low)
        object.__setattr__(self, "ijk_max", high)

    @classmethod
    def around_mask(cls, mask_kji: np.ndarray) -> Box:
        """The box of a (K, J, I) mask's non-zero voxels (an error for an empty mask)."""
        mask = np.asarray(mask_kji) != 0
        if not mask.any():
            raise InputError("the mask is empty: give a segment with at least one voxel")
        nonzero = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
        return cls(tuple(int(n[0]) for n in nonzero[::-1]), tuple(int(n[-1]) for n in nonzero[::-1]))

    @classmethod
    def from_ras_corners(cls, corners_ras, ijk_to_ras) -> Box:
        """The voxels whose centres lie in the bounding box (in IJK) of corners given in RAS.

        A rotated ROI is covered by the IJK bounding box of its corners. A box thinner than a voxel along
        some axis keeps the voxel nearest to its middle.
        """
        corners = ras_to_ijk_points(ijk_to_ras, np.asarray(corners_ras, dtype=np.float64).reshape(-1, 3))
        low_f, high_f = corners.min(axis=0), corners.max(axis=0)
        low, high = np.ceil(low_f - 1e-6), np.floor(high_f + 1e-6)
        thin = high < low
        middle = np.round((low_f + high_f) / 2)
        low[thin], high[thin] = middle[thin], middle[thin]
        return cls(tuple(low), tuple(high))

    def clipped(self, shape_kji) -> Box:
        """The part of the box inside the volume; an error if the box misses the volume entirely."""
        size_ijk = np.asarray(shape_kji[::-1])
        low, high = np.maximum(self.ijk_min, 0), np.minimum(self.ijk_max, size_ijk - 1)
        if np.any(high < low):
            raise InputError(
                f"the box {self.ijk_min} .. {self.ijk_max} lies outside the volume "
                f"({size_ijk[0]} x {size_ijk[1]} x {size_ijk[2]} voxels): draw it on the image"
            )
        return Box(tuple(low), tuple(high))

    def corners_ijk(self) -> np.ndarray:
        return np.array([self.ijk_min, self.ijk_max], dtype=np.float64)


@dataclass(frozen=True)
class Target:
    """One segment to produce. `name` names the segment; `text` (any string) is the text prompt."""

    name: str
    text: str | None = None
    points: Points | None = None
    box: Box | None = None

    def __post_init__(self):
        if self.text is not None and not self.text.strip():
            object.__setattr__(self, "text", None)
        if self.points is not None and not len(self.points):
            object.__setattr__(self, "points", None)
        if self.text is None and self.box is None and (self.points is None or not self.points.has_positive):
            raise InputError(
                f"target {self.name!r} has no usable prompt: give a text, a box or at least one "
                "positive point (negative points alone cannot say what to segment)"
            )


def plan_targets(
    texts: Sequence[str], points: Points | None, box: Box | None, unnamed: str, name: str | None = None
) -> list[Target]:
    """The targets of one request, for every face: each text alone is one target, named after its anatomy
    (Slicer's standard name); points and a box describe one structure, with at most one text, named `name`,
    else after its text, else `unnamed` (e.g. "SegVol 1")."""
    from .terminology import look_for_text

    texts = [text for text in texts if text.strip()]
    spatial = points is not None or box is not None
    if not texts and not spatial:
        raise InputError("nothing to segment: give an anatomy name, a positive point or a box")
    if spatial and len(texts) > 1:
        raise InputError(
            "points and a box describe one structure: give at most one name with them, or segment "
            "several names without points and box (one run per structure)"
        )
    if spatial:
        text = texts[0] if texts else None
        return [Target(name or (look_for_text(text).name if text else unnamed), text, points, box)]
    return [Target(look_for_text(text).name, text) for text in texts]
