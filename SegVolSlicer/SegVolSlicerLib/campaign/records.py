"""How an accepted label was made: the per-case record written beside it (<label>.segvol.json).

    {"case", "image", "label", "label_sha256", "annotator", "started", "ended", "active_seconds",
     "segvol": {"version", "weights", "weights_sha256", "point_sampling", "seed"},
     "steps": [{"mode", "zoom_in", "sources", "targets": [TARGET...], "confidence": {name: {...}}}, ...],
     "hand_edits": {segment: count}, "segments": [{"name", "value", "confidence_before", "confidence_after",
     "hand_edits"}], "previous": the record this one replaced (or null)}

A TARGET is the prompt exactly as the engine got it, in the CT's voxel coordinates (IJK): {"name", "text",
"points": {"ijk": [[i, j, k]...], "labels": [1|0...]}, "box": {"min": [i, j, k], "max": [i, j, k]}}. JSON keeps
every float bit for bit, so the same targets on the same CT with the same weights give the same mask again
(`replay`). Modes: "official" (SegVol's pipeline), "correction" (the local refine mode beyond it, starting from
the segment's previous result), "from-mask" (the official evaluation's prompts derived from a segment).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import __version__
from ..clinical.confidence import Confidence
from ..prompts import Box, Points, Target

OFFICIAL, CORRECTION, FROM_MASK = "official", "correction", "from-mask"
MODES = (OFFICIAL, CORRECTION, FROM_MASK)
RECORD_ENDING = ".segvol.json"


def record_path(label_path: str | Path) -> Path:
    """The record beside a label: labelsTr/x.nii.gz -> labelsTr/x.segvol.json."""
    label_path = Path(label_path)
    name = label_path.name
    for ending in (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha"):
        if name.endswith(ending):
            name = name[: -len(ending)]
            break
    return label_path.with_name(name + RECORD_ENDING)


def target_to_json(target: Target) -> dict:
    points = target.points
    return {
        "name": target.name,
        "text": target.text,
        "points": None if points is None else {"ijk": points.ijk.tolist(), "labels": points.labels.tolist()},
        "box": None if target.box is None else {"min": list(target.box.ijk_min), "max": list(target.box.ijk_max)},
    }


def target_from_json(data: dict) -> Target:
    """The inverse of target_to_json (the same floats, so the same model-space prompts)."""
    points, box = data.get("points"), data.get("box")
    return Target(
        str(data["name"]),
        data.get("text"),
        None if points is None else Points(np.asarray(points["ijk"], dtype=np.float64), points["labels"]),
        None if box is None else Box(tuple(box["min"]), tuple(box["max"])),
    )


def confidence_json(confidence: Confidence | None) -> dict | None:
    return None if confidence is None else {**confidence.as_dict(), "low": confidence.low}


def step_json(
    mode: str,
    targets: Sequence[Target],
    zoom_in: bool,
    sources: Sequence[str] = (),
    confidences: Sequence[Confidence | None] = (),
) -> dict:
    """One AI step: the targets run together, how, from which prompt tools (text, points, stroke, box)."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is none of {MODES}")
    return {
        "mode": mode,
        "zoom_in": bool(zoom_in),
        "sources": list(sources),
        "targets": [target_to_json(t) for t in targets],
        "confidence": {t.name: confidence_json(c) for t, c in zip(targets, confidences)},
    }


def segvol_identity(weights: str | None, weights_sha256: str | None, point_sampling="seeded", seed=0) -> dict:
    """What made the AI steps: this package's version and the weights (their name and sha256 when known)."""
    from ..clinical.dicom_seg import weights_identity

    return {
        "version": __version__,
        "weights": weights_identity(weights),
        "weights_sha256": weights_sha256,
        "point_sampling": point_sampling,
        "seed": seed if point_sampling == "seeded" else None,
    }
