"""The accepted cases as an nnU-Net v2 raw dataset, ready for `nnUNetv2_plan_and_preprocess`:

    DatasetNNN_Name/imagesTr/<case>_0000.nii.gz    the CT (one channel, "CT" normalization)
    DatasetNNN_Name/labelsTr/<case>.nii.gz         its label map: 0 background, 1..n the classes
    DatasetNNN_Name/dataset.json                   channel_names, labels, numTraining, file_ending

The dataset is written into a temporary folder beside OUT and renamed onto it at the end: a failed export
leaves no OUT. `check_nnunet_dataset` checks a folder against nnU-Net v2's rules for a raw dataset.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..imageio import read_ct, write_image_on, write_mask
from ..reporting import NO_REPORT, Reporter
from .campaign import Campaign
from .labels import label_map, read_label
from .sources import NNUNET
from .state import ACCEPTED

DATASET_NAME = re.compile(r"^Dataset\d{3}_[A-Za-z0-9_-]+$")
REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
FILE_ENDING = ".nii.gz"


@dataclass
class Export:
    folder: Path
    cases: list[str]
    classes: list[tuple[str, int]]
    warnings: list[str]


def _check_output(out: Path, campaign: Campaign) -> None:
    if not DATASET_NAME.match(out.name):
        raise InputError(
            f"--nnunet {out}: nnU-Net finds datasets by their folder name: name it DatasetNNN_Name "
            "(three digits, e.g. Dataset501_Liver) inside your nnUNet_raw folder"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--nnunet {out} exists and is not empty: give a new folder")
    campaign_folder = Path(campaign.source.folder).resolve()
    if out.resolve() == campaign_folder or campaign_folder in out.resolve().parents:
        raise InputError(f"--nnunet {out} lies inside the campaign folder {campaign_folder}: give a folder outside it")
    if not out.parent.is_dir():
        raise InputError(f"--nnunet {out}: folder {out.parent} does not exist")


def export_nnunet(campaign: Campaign, out: str | Path, reporter: Reporter = NO_REPORT) -> Export:
    """Every accepted case (in id order) with its label; classes: dataset.json's for an nnU-Net layout, else
    the accepted segments' names in the order they first appear."""
    out = Path(out).expanduser()
    _check_output(out, campaign)
    source, states = campaign.source, campaign.all_states()
    accepted = [
        case
        for case in sorted(source.cases, key=lambda c: c.id)
        if states[case.id].status == ACCEPTED and source.label_path(case.id).is_file()
    ]
    if not accepted:
        raise InputError(f"{source.folder} has no accepted case yet: accept cases before exporting them")
    classes = list(source.classes) if source.kind == NNUNET else []
    staging = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.partial")
    warnings = []
    try:
        (staging / "imagesTr").mkdir(parents=True)
        (staging / "labelsTr").mkdir()
        for number, case in enumerate(accepted):
            reporter.progress("case", number, len(accepted))
            reporter.check_cancelled()
            volume = read_ct(case.image)
            segments = read_label(source.label_path(case.id), volume, source.classes)
            if source.kind != NNUNET:
                for segment in segments:  # classes numbered in the order they first appear
                    if segment.name not in dict(classes):
                        classes.append((segment.name, len(classes) + 1))
            labels = label_map(segments, classes, source.label_path(case.id))
            overlap = sum(int((s.mask > 0).sum()) for s in segments) - int((labels > 0).sum())
            if overlap:
                warnings.append(f"{case.id}: segments overlap on {overlap} voxel(s); the later segment keeps them")
            write_image_on(staging / "imagesTr" / f"{case.id}_0000{FILE_ENDING}", volume.array, volume.reference)
            write_mask(staging / "labelsTr" / f"{case.id}{FILE_ENDING}", labels, volume.reference)
        description = {
            "channel_names": {"0": "CT"},
            "labels": {"background": 0, **{name: value for name, value in classes}},
            "numTraining": len(accepted),
            "file_ending": FILE_ENDING,
            "name": out.name.split("_", 1)[1],
            "description": f"Labels accepted in a SegVolSlicer campaign on {source.path}",
        }
        (staging / "dataset.json").write_text(json.dumps(description, indent=1), encoding="utf-8")
        problems = check_nnunet_dataset(staging, name=out.name)
        if problems:
            raise InputError(f"the export would not be a valid nnU-Net dataset: {'; '.join(problems[:5])}")
        if out.exists():
            out.rmdir()  # empty (checked above)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    reporter.progress("case", len(accepted), len(accepted))
    return Export(out, [c.id for c in accepted], classes, warnings)


def check_nnunet_dataset(folder: str | Path, name: str | None = None) -> list[str]:
    """What keeps `folder` from being an nnU-Net v2 raw dataset (empty: nothing): the folder name
    DatasetNNN_Name, dataset.json's keys, labels 0 (background) .. n consecutive integers, one label file per
    training case and numTraining of them, every channel of every case in imagesTr (<case>_XXXX<ending>) and no
    image without a label, label values among the declared ones, and images and labels on the same grid."""
    folder = Path(folder)
    problems = []
    if not DATASET_NAME.match(name or folder.name):
        problems.append(f"folder name {name or folder.name!r} is not DatasetNNN_Name")
    try:
        description = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return [*problems, f"no readable dataset.json ({error})"]
    missing = [key for key in REQUIRED_KEYS if key not in description]
    if missing:
        return [*problems, f"dataset.json lacks {', '.join(missing)}"]
    labels, ending = description["labels"], description["file_ending"]
    values = sorted(labels.values()) if all(isinstance(v, int) for v in labels.values()) else None
    if labels.get("background") != 0:
        problems.append('dataset.json labels: "background" must be 0')
    if values is None or values != list(range(len(values))):
        problems.append(f"dataset.json labels must be consecutive integers from 0, not {sorted(labels.values())}")
    channels = description["channel_names"]
    if not channels or sorted(int(c) for c in channels) != list(range(len(channels))):
        problems.append("dataset.json channel_names must be numbered 0 .. n-1")
    label_files = sorted(p for p in (folder / "labelsTr").glob(f"*{ending}"))
    cases = [p.name[: -len(ending)] for p in label_files]
    if description["numTraining"] != len(cases):
        problems.append(f"numTraining is {description['numTraining']} but labelsTr holds {len(cases)} label(s)")
    expected_images = {f"{case}_{int(c):04d}{ending}" for case in cases for c in channels}
    present = {p.name for p in (folder / "imagesTr").glob(f"*{ending}")}
    for image in sorted(expected_images - present):
        problems.append(f"imagesTr/{image} is missing")
    for image in sorted(present - expected_images):
        problems.append(f"imagesTr/{image} has no label in labelsTr")
    allowed = set(labels.values())
    for case, label_file in zip(cases, label_files):
        label = sitk.ReadImage(str(label_file))
        found = set(np.unique(sitk.GetArrayViewFromImage(label)).tolist())
        if found - allowed:
            problems.append(f"labelsTr/{label_file.name} has values {sorted(found - allowed)} not in dataset.json")
        for channel in channels:
            image_path = folder / "imagesTr" / f"{case}_{int(channel):04d}{ending}"
            if image_path.is_file() and not _same_grid(sitk.ReadImage(str(image_path)), label):
                problems.append(f"labelsTr/{label_file.name} is not on the grid of imagesTr/{image_path.name}")
    return problems


def _same_grid(image: sitk.Image, label: sitk.Image) -> bool:
    return (
        image.GetSize() == label.GetSize()
        and np.allclose(image.GetSpacing(), label.GetSpacing())
        and np.allclose(image.GetOrigin(), label.GetOrigin())
        and np.allclose(image.GetDirection(), label.GetDirection())
    )
