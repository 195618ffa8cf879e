"""Finding the cases of a run: CT files, folders of them, DICOM folders, CSV manifests (`segvol batch`), and
labelled datasets in the Medical Segmentation Decathlon / nnU-Net layout or CSVs of image,label pairs
(`segvol evaluate --dataset`). Each case gets an id that is unique in the run and safe as a file name.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class Case:
    id: str  # unique in the run, safe as a file name
    image: str  # absolute path of a CT file or DICOM folder
    label: str | None = None  # absolute path of its label map (evaluation)
    series: str | None = None  # the SeriesInstanceUID in a DICOM folder that holds several


def is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(IMAGE_ENDINGS)


def file_stem(path: Path) -> str:
    name = path.name
    for ending in IMAGE_ENDINGS:
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return path.stem if path.is_file() else name


def safe_id(text: str) -> str:
    """`text` as a portable file name: letters, digits, '.', '_' and '-' kept, runs of anything else -> '_'."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return cleaned or "case"


def manifest_rows(path: Path, columns: Sequence[str]) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.DictReader(file)
            header = [name.strip() for name in reader.fieldnames or []]
            missing = [c for c in columns if c not in header]
            if missing:
                raise InputError(
                    f"manifest {path} has no column {', '.join(missing)} (columns: "
                    f"{', '.join(header) or 'none'}): give a CSV with a header row "
                    f"{','.join(columns)}[,id]"
                )
            rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"cannot read manifest {path}: {error}") from None
    for number, row in enumerate(rows, start=2):
        if any(not row.get(c) for c in columns):
            raise InputError(f"manifest {path}, line {number}: empty {' or '.join(columns)}")
    return rows


def resolve_path(text: str, folder: Path) -> str:
    path = Path(text).expanduser()
    return str((path if path.is_absolute() else folder / path).resolve())


def discover_cases(inputs: Iterable[str | os.PathLike]) -> list[Case]:
    """The cases of INPUT...: image files; folders (each NIfTI/NRRD/MHA file in it is a case, a folder of other
    files is a DICOM case per series in it); CSV manifests (column `image`, optional `id`, paths relative to the
    CSV). The same image named twice is one case."""
    found: list[tuple[str | None, str]] = []  # (id from a manifest or None, image)
    series: list[str | None] = []
    for given in inputs:
        path = Path(given).expanduser()
        if not path.exists():
            raise InputError(f"input not found: {path}")
        if path.is_file() and path.suffix.lower() == ".csv":
            rows = manifest_rows(path, ["image"])
            found += [(row.get("id") or None, resolve_path(row["image"], path.parent)) for row in rows]
            series += [None] * len(rows)
        elif path.is_dir():
            images = sorted(p for p in path.iterdir() if is_image_file(p))
            if images:
                found += [(None, str(p.resolve())) for p in images]
                series += [None] * len(images)
            elif any(p.is_file() and not p.name.startswith(".") for p in path.iterdir()):
                in_folder = dicom_series_cases(path)
                found += [(case_id, str(path.resolve())) for case_id, _ in in_folder]
                series += [uid for _, uid in in_folder]
            else:
                raise InputError(
                    f"{path} holds no NIfTI/NRRD/MHA file and no DICOM files: give CT files, "
                    "folders of them, DICOM folders or a CSV manifest"
                )
        else:  # a file named explicitly is a case whatever its name; a file that is no CT fails as a case
            found.append((None, str(path.resolve())))
            series.append(None)
    return with_unique_ids(found, series=series)


def dicom_series_cases(folder: Path) -> list[tuple[str | None, str | None]]:
    """(case id, SeriesInstanceUID) of each series of a DICOM folder: (None, None) for a folder of one series (or
    none: it fails as a case), else `<folder>-<series number>` (or -1, -2... where numbers repeat)."""
    from ..dicom_series import find_series

    found = find_series(folder)
    if len(found) < 2:
        return [(None, None)]
    numbers = [summary.number for summary in found]
    if any(not n for n in numbers) or len(set(numbers)) < len(numbers):
        numbers = [str(n) for n in range(1, len(found) + 1)]
    return [(f"{folder.name}-{number}", summary.uid) for number, summary in zip(numbers, found)]


def with_unique_ids(
    found: Sequence[tuple[str | None, str]],
    labels: Sequence[str | None] | None = None,
    series: Sequence[str | None] | None = None,
) -> list[Case]:
    """Cases with ids from the manifest (must be unique) or from the file names (numbered when they clash): the
    label's name where there is a label (a dataset), else the image's."""
    labels = labels or [None] * len(found)
    series = series or [None] * len(found)
    cases, seen, used = [], set(), set()
    given = [safe_id(i) for i, _ in found if i is not None]
    duplicates = sorted({i for i in given if given.count(i) > 1})
    if duplicates:
        raise InputError(
            f"the manifest gives the id(s) {', '.join(duplicates)} to several images: ids must be "
            "unique (they name the output files)"
        )
    used.update(given)
    for (given_id, image), label, uid in zip(found, labels, series):
        if (image, label, uid) in seen:
            continue
        seen.add((image, label, uid))
        if given_id is not None:
            case_id = safe_id(given_id)
        else:
            base = case_id = safe_id(file_stem(Path(label if label is not None else image)))
            number = 1
            while case_id in used:
                number += 1
                case_id = f"{base}-{number}"
            used.add(case_id)
        cases.append(Case(case_id, image, label, uid))
    return cases


# --- labelled datasets ---


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
            label = Path(resolve_path(entry["label"], folder))
            image = Path(resolve_path(entry["image"], folder))
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
        rows = manifest_rows(path, ["image", "label"])
        found = [(row.get("id") or None, resolve_path(row["image"], path.parent)) for row in rows]
        return with_unique_ids(found, [resolve_path(row["label"], path.parent) for row in rows]), []
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
    found = [(None, str(image)) for image, _ in pairs]
    return with_unique_ids(found, [str(label) for _, label in pairs]), classes


def read_dataset_json(folder: str | os.PathLike) -> tuple[dict, list[tuple[str, int]]]:
    """A dataset folder's dataset.json and the classes it names ({} and none without the file)."""
    path = Path(folder) / "dataset.json"
    if not path.is_file():
        return {}, []
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(description, dict):
        raise InputError(f"{path} is not a dataset description (a JSON object)")
    labels = description.get("labels")
    return description, _classes_from_labels(labels, path) if isinstance(labels, dict) else []
