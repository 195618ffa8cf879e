"""A confidence per segment from SegVol's probabilities (the sigmoid of the logits the mask thresholds).

Two numbers, both from the same probabilities p that give the mask (mask = p > 0.5):
- mean_probability: the mean of p over the segment's voxels (0.5 to 1; 1 = every voxel far from the threshold);
- uncertain_share: of the voxels with p >= 0.25 (the segment and its near misses), the share with
  0.25 <= p <= 0.75, i.e. close to the threshold either way (0 = a crisp segment, 1 = all borderline).
They say how decided the model is, not how likely the segment is to be right: they are not calibrated.

    >>> import numpy as np
    >>> p = np.array([0.9, 0.9, 0.6, 0.3, 0.1], dtype=np.float32)
    >>> c = Confidence.of(p, p > 0.5)
    >>> round(c.mean_probability, 3), round(c.uncertain_share, 3), c.low
    (0.8, 0.5, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BAND = (0.25, 0.75)  # probabilities this close to the 0.5 threshold count as uncertain
LOW_MEAN_PROBABILITY = 0.85  # below: shown as low confidence
HIGH_UNCERTAIN_SHARE = 0.25  # above: shown as low confidence
MEAN_TAG, UNCERTAIN_TAG = "SegVol.MeanProbability", "SegVol.UncertainShare"


@dataclass(frozen=True)
class Confidence:
    mean_probability: float | None  # None: empty segment
    uncertain_share: float | None  # None: no voxel with p >= 0.25

    @classmethod
    def of(cls, probabilities: np.ndarray, mask: np.ndarray) -> Confidence:
        inside = mask > 0
        count = int(np.count_nonzero(inside))
        mean = float(probabilities[inside].astype(np.float64).mean()) if count else None
        candidates = probabilities >= BAND[0]
        near = int(np.count_nonzero(candidates & (probabilities <= BAND[1])))
        total = int(np.count_nonzero(candidates))
        return cls(mean, near / total if total else None)

    @property
    def low(self) -> bool:
        """Worth a look: a low mean probability or many borderline voxels (or nothing found)."""
        if self.mean_probability is None:
            return True
        return self.mean_probability < LOW_MEAN_PROBABILITY or (self.uncertain_share or 0.0) > HIGH_UNCERTAIN_SHARE

    def tags(self) -> dict[str, str]:
        """Segment tags (saved with a Slicer scene and in .seg.nrrd files)."""
        return {MEAN_TAG: _text(self.mean_probability), UNCERTAIN_TAG: _text(self.uncertain_share)}

    def as_dict(self) -> dict:
        return {"mean_probability": self.mean_probability, "uncertain_share": self.uncertain_share}

    @classmethod
    def from_dict(cls, data: dict) -> Confidence:
        return cls(_number(data.get("mean_probability")), _number(data.get("uncertain_share")))

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Confidence | None:
        if MEAN_TAG not in tags:
            return None
        return cls(_number(tags.get(MEAN_TAG) or None), _number(tags.get(UNCERTAIN_TAG) or None))


def _text(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _number(value) -> float | None:
    return None if value is None else float(value)


def result_confidence(result) -> Confidence | None:
    """The confidence of an engine result: from its probabilities (a session with probabilities on), or the
    one a server computed (RemoteResult.confidence); None when neither is there."""
    probabilities = getattr(result, "probabilities", None)
    if probabilities is not None:
        return Confidence.of(probabilities, result.mask)
    return getattr(result, "confidence", None)
