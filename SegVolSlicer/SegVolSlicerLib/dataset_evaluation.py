"""`segvol evaluate --dataset`: the official protocol on every case of a labelled dataset.

A dataset is a folder in the Medical Segmentation Decathlon / nnU-Net layout (dataset.json with the label
names, and its "training" list or imagesTr/<case>_0000.<ending> paired with labelsTr/<case>.<ending>) or a CSV
of image,label pairs (optional id). Each case runs `evaluation.evaluate_classes` for every prompt mode on one
session and writes OUT/cases/<id>/metrics.csv and its masks OUT/cases/<id>/<prompt>/<class>.nii.gz, as the
single-case `segvol evaluate` does; once every case ran, OUT/metrics.csv (all cases), OUT/summary.csv (mean and
sample standard deviation of Dice per class and prompt) and OUT/dice.png (a box plot of the same) are written.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .batch import Case, Job, _manifest_rows, _resolve, _stem, _with_unique_ids, read_ct, safe_id
from .engine import EngineHost, VolumeInput
from .errors import InputError
from .reporting import Reporter

METRIC_FIELDS = ("case", "class", "label", "prompt", "dice", "zoom_out_dice", "windows")
SUMMARY_FIELDS = ("class", "prompt", "cases", "dice_mean", "dice_sd", "zoom_out_dice_mean", "zoom_out_dice_sd")


# --- reading a dataset ---


def _classes_from_labels(labels: dict, path: Path) -> list[tuple[str, int]]:
    """dataset.json "labels": MSD's {"1": "liver"} or nnU-Net v2's {"liver": 1}; background (0) left out."""
    classes = []
    for key, value in labels.items():
        name, number = (value, key) if str(key).strip().lstrip("-").isdigit() else (key, value)
        if isinstance(number, (list, tuple)):
            raise InputError(
                f"{path}: '{name}' is a region of several labels {number}: give the classes to "
                "evaluate as --class NAME=VALUE"
            )
        try:
            number = int(number)
        except (TypeError, ValueError):
            raise InputError(f"{path}: label '{key}': '{value}' is not a label value") from None
        if number != 0:
            classes.append((str(name), number))
    return classes


def _image_of(folder: Path, label: Path, ending: str) -> Path | None:
    """The CT of a labelsTr case: imagesTr/<case>_0000<ending> (nnU-Net) or imagesTr/<case><ending> (MSD)."""
    case = label.name[: -len(ending)]
    for name in (f"{case}_0000{ending}", label.name):
        if (folder / "imagesTr" / name).is_file():
            return folder / "imagesTr" / name
    return None


def _pairs_from_folder(folder: Path, description: dict) -> list[tuple[Path, Path]]:
    training = description.get("training")
    if isinstance(training, list) and training:
        pairs = []
        for entry in training:
            if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
                raise InputError(f"{folder / 'dataset.json'}: each 'training' entry needs 'image' and 'label'")
            label = Path(_resolve(entry["label"], folder))
            image = Path(_resolve(entry["image"], folder))
            if not image.exists():  # nnU-Net v1 lists the case name, the file carries the _0000 channel
                ending = next((e for e in (".nii.gz", ".nrrd", ".mha", ".nii") if image.name.endswith(e)), "")
                image = image.with_name(image.name[: len(image.name) - len(ending)] + f"_0000{ending}")
            pairs.append((image, label))
        return pairs
    ending = description.get("file_ending", ".nii.gz")
    labels_folder = folder / "labelsTr"
    if not labels_folder.is_dir():
        raise InputError(
            f"{folder} has no labelsTr folder and its dataset.json no 'training' list: give a "
            "dataset in the MSD/nnU-Net layout or a CSV of image,label pairs"
        )
    pairs = []
    for label in sorted(labels_folder.iterdir()):
        if label.name.startswith(".") or not label.name.endswith(ending):
            continue
        image = _image_of(folder, label, ending)
        if image is None:
            raise InputError(
                f"{label} has no image in {folder / 'imagesTr'} (expected {label.name[: -len(ending)]}_0000{ending})"
            )
        pairs.append((image, label))
    return pairs


def discover_dataset(path: str) -> tuple[list[Case], list[tuple[str, int]]]:
    """The cases (with labels) and the classes dataset.json names (none for a CSV)."""
    path = Path(path).expanduser()
    if path.is_file() and path.suffix.lower() == ".csv":
        rows = _manifest_rows(path, ["image", "label"])
        found = [
            (row.get("id") or safe_id(_stem(Path(row["label"]))), _resolve(row["image"], path.parent)) for row in rows
        ]
        return _with_unique_ids(found, [_resolve(row["label"], path.parent) for row in rows]), []
    if not path.is_dir():
        raise InputError(
            f"--dataset {path}: give a dataset folder (dataset.json, imagesTr/, labelsTr/) or a CSV "
            "with columns image,label"
        )
    description, classes = {}, []
    description_path = path / "dataset.json"
    if description_path.is_file():
        try:
            description = json.loads(description_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as error:
            raise InputError(f"{description_path} is not valid JSON ({error})") from None
        if not isinstance(description, dict):
            raise InputError(f"{description_path} is not a dataset description (a JSON object)")
        if isinstance(description.get("labels"), dict):
            classes = _classes_from_labels(description["labels"], description_path)
    pairs = _pairs_from_folder(path, description)
    if not pairs:
        raise InputError(f"{path} holds no labelled case")
    found = [(safe_id(_stem(label)), str(image)) for image, label in pairs]
    return _with_unique_ids(found, [str(label) for _, label in pairs]), classes


# --- the per-case function ---


@dataclass(frozen=True)
class EvaluateJob(Job):
    classes: tuple[tuple[str, int], ...] = ()
    prompts: tuple[str, ...] = ("text+box",)

    def case_dir(self, case: Case) -> Path:
        return Path(self.output_dir) / "cases" / case.id

    def output_of(self, case: Case) -> Path:
        return self.case_dir(case) / "metrics.csv"

    def run(self, host: EngineHost, case: Case, reporter: Reporter) -> list[str]:
        from .evaluation import evaluate_classes, metrics_csv
        from .imageio import atomic_output, read_label_volume, write_mask

        volume = read_ct(case.image)
        labels = read_label_volume(case.label, volume)
        present = set(np.unique(labels).tolist())
        classes = [(name, value) for name, value in self.classes if value in present]
        warnings = [
            f"{name}={value} is absent from the label map" for name, value in self.classes if value not in present
        ]
        if not classes:
            raise InputError(
                f"none of the classes is in {case.label} (values present: "
                f"{', '.join(str(v) for v in sorted(present) if v) or 'none'})"
            )
        rows = []
        for prompt in self.prompts:  # one session: every class and prompt of the CT share its embeddings
            results = evaluate_classes(
                host,
                VolumeInput(case.id, volume.array, volume.ijk_to_ras),
                labels,
                classes,
                prompt,
                zoom_in=self.zoom_in,
                reporter=reporter,
            )
            folder = self.case_dir(case) / prompt
            folder.mkdir(parents=True, exist_ok=True)
            for result in results:
                warnings += [w for w in result.warnings if w not in warnings]
                write_mask(folder / f"{safe_id(result.name)}.nii.gz", result.mask, volume.reference)
                rows.append({"case": case.id, **result.row()})
        with atomic_output(self.output_of(case)) as tmp:  # last: its presence marks the case done
            tmp.write_text(metrics_csv(rows), encoding="utf-8")
        return warnings


# --- the dataset's tables and plot ---


def collect_metrics(job: EvaluateJob, cases: Sequence[Case], statuses: dict[str, str]) -> list[dict]:
    """The metric rows of every case recorded ok, in case order."""
    rows = []
    for case in cases:
        path = job.output_of(case)
        if statuses.get(case.id) == "ok" and path.is_file():
            with open(path, newline="", encoding="utf-8") as file:
                rows += list(csv.DictReader(file))
    return rows


def summarize(rows: Sequence[dict]) -> list[dict]:
    """Mean and sample standard deviation (n-1; 0 for one case) of Dice per class and prompt."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["class"], row["prompt"]), []).append(row)

    def mean_sd(values: list[float]) -> tuple[str, str]:
        sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        return f"{float(np.mean(values)):.6f}", f"{sd:.6f}"

    summary = []
    for (name, prompt), group in groups.items():
        dice_mean, dice_sd = mean_sd([float(r["dice"]) for r in group])
        zoom_out_mean, zoom_out_sd = mean_sd([float(r["zoom_out_dice"]) for r in group])
        summary.append(
            {
                "class": name,
                "prompt": prompt,
                "cases": len(group),
                "dice_mean": dice_mean,
                "dice_sd": dice_sd,
                "zoom_out_dice_mean": zoom_out_mean,
                "zoom_out_dice_sd": zoom_out_sd,
            }
        )
    return summary


def write_table(path: Path, fields: Sequence[str], rows: Sequence[dict]) -> None:
    from .imageio import atomic_output

    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_output(path) as tmp:
        tmp.write_text(table.getvalue(), encoding="utf-8")


def write_box_plot(path: Path, rows: Sequence[dict]) -> None:
    """Dice per class, one box per prompt mode (matplotlib, the `eval` extra; headless Agg backend)."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("the box plot needs matplotlib: pip install 'SegVolSlicer[eval]'") from None
    from .imageio import atomic_output

    classes = list(dict.fromkeys(row["class"] for row in rows))
    prompts = list(dict.fromkeys(row["prompt"] for row in rows))
    width = 0.8 / len(prompts)
    figure, axes = plt.subplots(figsize=(1.5 + max(3.0, 1.2 * len(classes) * max(1, len(prompts) / 2)), 4.0), dpi=100)
    for number, prompt in enumerate(prompts):
        values = [[float(r["dice"]) for r in rows if r["class"] == name and r["prompt"] == prompt] for name in classes]
        shown = [(position, v) for position, v in enumerate(values) if v]
        boxes = axes.boxplot(
            [v for _, v in shown],
            positions=[p + (number - (len(prompts) - 1) / 2) * width for p, _ in shown],
            widths=width * 0.9,
            patch_artist=True,
            manage_ticks=False,
            medianprops={"color": "black"},
        )
        for box in boxes["boxes"]:
            box.set_facecolor(f"C{number}")
        axes.plot([], [], color=f"C{number}", linewidth=8, label=prompt)
    slanted = len(classes) > 4
    axes.set_xticks(range(len(classes)), classes, rotation=30 if slanted else 0, ha="right" if slanted else "center")
    axes.set_ylim(0, 1)
    axes.set_ylabel("Dice")
    axes.legend(title="prompt", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)


def write_dataset_tables(job: EvaluateJob, cases: Sequence[Case], statuses: dict[str, str]) -> list[dict]:
    """OUT/metrics.csv, OUT/summary.csv and OUT/dice.png from the cases done; returns the summary rows."""
    output_dir = Path(job.output_dir)
    rows = collect_metrics(job, cases, statuses)
    write_table(output_dir / "metrics.csv", METRIC_FIELDS, rows)
    summary = summarize(rows)
    write_table(output_dir / "summary.csv", SUMMARY_FIELDS, summary)
    if rows:
        write_box_plot(output_dir / "dice.png", rows)
    return summary
