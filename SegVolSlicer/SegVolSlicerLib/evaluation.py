"""The official evaluation protocol (inference_demo.py): prompts derived from a label map, and Dice.

For each class, the label is cropped like the image and resized to 32x256x256 with nearest-exact (the
demo's `zoom_out_label`); from it:
  box   = its bounding box (`generate_box`, no jitter), with the filled box as the zoom-in map;
  point = `select_points(label, num_positive_extra=3, num_negative_extra=3)` (1 + 3 positive, 3 negative,
          random), with the positive clicks as the zoom-in map;
both maps are made at 32x256x256 and nearest-up-sampled to the crop, as the demo does.
Dice is the demo's `dice_score`: 2 |P & G| / (|P| + |G| + 1), on the cropped grid.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .engine import EngineHost, VolumeInput
from .errors import InputError
from .imageio import atomic_output, write_mask
from .inference.model_space import ModelSpace
from .inference.point_sampling import select_points
from .inference.preprocess import PreparedVolume, resize_nearest_exact
from .inference.prompt_mapping import BoxMap, ClickMap, ModelPrompts
from .reporting import NO_REPORT, Reporter
from .vocabulary import resolve_name, unknown_name_warning

PROMPT_MODES = ("text", "box", "point", "text+box", "text+point")


@dataclass(frozen=True)
class PromptMode:
    text: bool
    box: bool
    point: bool

    @classmethod
    def parse(cls, mode: str) -> PromptMode:
        if mode not in PROMPT_MODES:
            raise InputError(f"unknown prompt mode {mode!r}: choose one of {', '.join(PROMPT_MODES)}")
        parts = mode.split("+")
        return cls("text" in parts, "box" in parts, "point" in parts)


def zoom_out_label(label_kji: np.ndarray, prepared: PreparedVolume) -> torch.Tensor:
    """A binary (K, J, I) label -> the demo's 32x256x256 zoom-out label."""
    cropped = torch.from_numpy(np.ascontiguousarray(prepared.crop_kji(label_kji), dtype=np.float32))
    return resize_nearest_exact(cropped)[0, 0]


def _upsampled_box(low, high, space: ModelSpace) -> BoxMap:
    """The crop voxels a zoom-out box covers after nearest up-sampling (the demo's `binary_cube`)."""
    intervals = [space.zoom_out_interval_to_crop(axis, int(low[axis]), int(high[axis])) for axis in range(3)]
    if any(interval is None for interval in intervals):
        return BoxMap(None, None)
    return BoxMap(tuple(i[0] for i in intervals), tuple(i[1] for i in intervals))


def _upsampled_clicks(coords: torch.Tensor, labels: torch.Tensor, space: ModelSpace) -> ClickMap:
    """The crop voxels the positive zoom-out clicks cover after nearest up-sampling (`binary_points`)."""
    voxels = []
    for point in coords[labels == 1].long().tolist():
        ranges = [np.flatnonzero(space.upsample_source[axis] == point[axis]) for axis in range(3)]
        voxels.append(np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1).reshape(-1, 3))
    voxels = np.concatenate(voxels) if voxels else np.zeros((0, 3), dtype=np.int64)
    return ClickMap(np.unique(voxels, axis=0))


def label_prompts(
    label_kji: np.ndarray,
    text: str | None,
    mode: PromptMode,
    prepared: PreparedVolume,
    space: ModelSpace,
    generator: torch.Generator | None,
) -> ModelPrompts:
    """The demo's prompts for one class (`label_kji` binary on the input grid). Clicks are drawn from
    `generator` (None: torch's global generator); pass the same generator on to the zoom-in, as the official
    demo's draws continue one random stream."""
    resized = zoom_out_label(label_kji, prepared)
    points = box = box_map = click_map = None
    if mode.point:
        coords, labels = select_points(resized, generator, num_positive_extra=3, num_negative_extra=3)
        points = (coords.numpy().astype(np.float64), labels.numpy().astype(np.float64))
        click_map = _upsampled_clicks(coords, labels, space)
    if mode.box:
        positive = torch.nonzero(resized > 0)
        if len(positive) == 0:
            box = np.full(6, -1.0)
            box_map = BoxMap(None, None)
        else:
            low, high = positive.min(dim=0).values.numpy(), positive.max(dim=0).values.numpy()
            box = np.concatenate([low, high]).astype(np.float64)
            box_map = _upsampled_box(low, high, space)
    return ModelPrompts(text if mode.text else None, points, box, box_map, click_map)


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
    for result in results:
        write_mask(folder / mask_file_name(result.name), result.mask, reference)
    write_metrics_csv(folder / "metrics.csv", [result.row() for result in results])
    return results
