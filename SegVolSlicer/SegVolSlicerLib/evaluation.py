"""The official evaluation protocol (inference_demo.py): each class of a label map segmented from the prompts
the demo derives from it (inference/label_prompts.py), scored with the demo's Dice, written as masks and a
metrics table (`segvol evaluate`, one case or a dataset).

Dice is the demo's `dice_score`: 2 |P & G| / (|P| + |G| + 1), on the cropped grid.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .engine import EngineHost, VolumeInput
from .files import atomic_output, staged_outputs
from .imageio import write_mask
from .inference.label_prompts import PromptMode, label_prompts
from .reporting import NO_REPORT, Reporter
from .vocabulary import resolve_name, unknown_name_warning


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """The demo's Dice: 2 |P & G| / (|P| + |G| + 1)."""
    prediction, truth = prediction > 0, truth > 0
    overlap = np.count_nonzero(prediction & truth)
    return float(2.0 * overlap / (np.count_nonzero(prediction) + np.count_nonzero(truth) + 1.0))


@dataclass
class ClassResult:
    """One class of one case: the official Dice of the full result and of the zoom-out pass alone."""

    name: str
    label: int
    prompt: str
    dice: float
    zoom_out_dice: float
    windows: int
    mask: np.ndarray = field(repr=False)  # (K, J, I) uint8 on the image's grid
    warnings: list[str] = field(default_factory=list)

    def row(self) -> dict:
        return {
            "class": self.name,
            "label": self.label,
            "prompt": self.prompt,
            "dice": self.dice,
            "zoom_out_dice": self.zoom_out_dice,
            "windows": self.windows,
        }


def class_name_warnings(name: str) -> list[str]:
    """The text prompt is the class name as typed (as the official evaluation): say when SegVol knows it
    under another name, or not at all."""
    training_name, known = resolve_name(name)
    if not known:
        return [unknown_name_warning(name)]
    if training_name != name:
        return [
            f"'{name}' is used as typed, as the official evaluation does; SegVol's training name for it is "
            f"'{training_name}'"
        ]
    return []


def evaluate_classes(
    host: EngineHost,
    volume: VolumeInput,
    labels_kji: np.ndarray,
    classes: Sequence[tuple[str, int]],
    prompt: str,
    zoom_in: bool = True,
    reporter: Reporter = NO_REPORT,
) -> list[ClassResult]:
    """The official protocol for each (name, label value) of one CT, on the host's session of the volume."""
    mode = PromptMode.parse(prompt)

    def work(session) -> list[ClassResult]:
        results = []
        for index, (name, value) in enumerate(classes):
            reporter.progress("target", index, len(classes))
            truth = (labels_kji == value).astype(np.uint8)
            generator = session.new_generator()
            # The text prompt is the class name as typed, as the official demo's category names: synonyms are
            # not substituted, so the result stays comparable with the official evaluation.
            prompts = label_prompts(truth, name, mode, session.prepared, session.space, generator)
            result = session.segment_model_prompts(name, prompts, zoom_in, reporter, generator=generator)
            crop = result.crop
            warnings = (class_name_warnings(name) if mode.text else []) + result.warnings
            results.append(
                ClassResult(
                    name,
                    int(value),
                    prompt,
                    dice(result.mask[crop], truth[crop]),
                    dice(result.zoom_out_mask[crop], truth[crop]),
                    result.windows,
                    result.mask,
                    warnings,
                )
            )
        return results

    return host.run(volume, work, reporter)


def metrics_csv(rows: Sequence[dict]) -> str:
    """Rows as CSV text, floats with 6 decimals."""
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.6f}" if isinstance(v, float) else v for k, v in row.items()})
    return table.getvalue()


def write_metrics_csv(path: Path, rows: Sequence[dict]) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(metrics_csv(rows), encoding="utf-8")


def mask_file_name(class_name: str) -> str:
    """The mask file of a class: its name as typed (spaces too), path separators and controls replaced."""
    cleaned = "".join("_" if c in '/\\:*?"<>|' or not c.isprintable() else c for c in class_name).strip(" .")
    return f"{cleaned or 'class'}.nii.gz"


def evaluate_case(
    host: EngineHost,
    volume: VolumeInput,
    reference,
    labels_kji: np.ndarray,
    classes: Sequence[tuple[str, int]],
    prompt: str,
    folder: Path,
    zoom_in: bool = True,
    reporter: Reporter = NO_REPORT,
) -> list[ClassResult]:
    """One CT, one prompt mode: `folder/<class>.nii.gz` per class and `folder/metrics.csv`, as both
    `segvol evaluate` and `segvol evaluate --dataset` write them (`reference`: the CT's image, for the masks'
    geometry)."""
    results = evaluate_classes(host, volume, labels_kji, classes, prompt, zoom_in=zoom_in, reporter=reporter)
    folder.mkdir(parents=True, exist_ok=True)
    # All or none: a mask that cannot be written leaves neither the masks before it nor metrics.csv.
    paths = [folder / mask_file_name(result.name) for result in results] + [folder / "metrics.csv"]
    with staged_outputs(paths) as staged:
        for result, path in zip(results, staged):
            write_mask(path, result.mask, reference)
        write_metrics_csv(staged[-1], [result.row() for result in results])
    return results
