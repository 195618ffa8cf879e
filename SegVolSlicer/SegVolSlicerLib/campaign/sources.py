"""What a campaign annotates: the cases of a folder of CTs, a CSV manifest, an MSD/nnU-Net layout (imagesTr/,
labelsTr/, dataset.json) or a `segvol batch` output folder, each with its existing result (the batch's
segmentation with its statistics, or the label map in labelsTr) and where its accepted label goes.

Discovery is datasets.cases' (the ids are the ones `segvol batch` gives); the nnU-Net layout lists every image of
imagesTr, labelled or not, because a campaign labels the ones that have no label yet.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from ..clinical.confidence import Confidence
from ..datasets.cases import discover_cases, is_image_file, read_dataset_json, safe_id, with_unique_ids
from ..datasets.records import Records
from ..errors import InputError

FOLDER, MANIFEST, NNUNET, BATCH = "folder", "manifest", "nnunet", "batch"
REVIEWED = "reviewed"  # where accepted labels go outside an nnU-Net layout
CHANNEL = "_0000"  # nnU-Net's first (here: only) channel


@dataclass(frozen=True)
class CampaignCase:
    id: str
    image: str  # absolute path of the CT (file or DICOM folder)
    result: str | None = None  # its existing result: a .seg.nrrd (batch) or a label map (labelsTr)
    confidence: float | None = None  # the lowest mean probability of its batch segments (None: not known)
    low_segments: tuple[str, ...] = ()  # segments the batch statistics call low confidence


@dataclass(frozen=True)
class Source:
    kind: str  # FOLDER, MANIFEST, NNUNET or BATCH
    path: str  # what was opened
    folder: str  # the campaign folder: its state, the accepted labels and their records
    cases: tuple[CampaignCase, ...]
    classes: tuple[tuple[str, int], ...] = ()  # dataset.json's (name, label value), nnU-Net layouts only
    file_ending: str = ".nii.gz"

    def label_path(self, case_id: str) -> Path:
        """Where the case's accepted label goes: labelsTr/<case><ending> or reviewed/<id>.seg.nrrd."""
        if self.kind == NNUNET:
            return Path(self.folder) / "labelsTr" / f"{case_id}{self.file_ending}"
        return Path(self.folder) / REVIEWED / f"{case_id}.seg.nrrd"

    def case(self, case_id: str) -> CampaignCase:
        for case in self.cases:
            if case.id == case_id:
                return case
        raise InputError(f"no case {case_id!r} in {self.path}")


def open_source(path: str | os.PathLike) -> Source:
    """The source at `path`: a CSV manifest, a `segvol batch` output folder (results.csv and its records), an
    MSD/nnU-Net layout (imagesTr/), or a folder of CT files."""
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise InputError(
            f"{path} does not exist: give a folder of CTs, a CSV manifest, a dataset folder "
            "(imagesTr/, dataset.json) or a `segvol batch` output folder"
        )
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise InputError(f"{path} is a file but no CSV manifest: give a folder or a CSV with a column image")
        cases = tuple(CampaignCase(c.id, c.image) for c in discover_cases([path]))
        return Source(MANIFEST, str(path), str(path.parent), cases)
    if (path / "results.csv").is_file() and Records(path).state.is_dir():
        return _batch_source(path)
    if (path / "imagesTr").is_dir():
        return _nnunet_source(path)
    cases = tuple(CampaignCase(c.id, c.image) for c in discover_cases([path]))
    return Source(FOLDER, str(path), str(path), cases)


def _nnunet_source(folder: Path) -> Source:
    description, classes = read_dataset_json(folder)
    ending = str(description.get("file_ending", ".nii.gz"))
    images = sorted(p for p in (folder / "imagesTr").iterdir() if is_image_file(p) and p.name.endswith(ending))
    found, labels = [], []
    for image in images:
        stem = image.name[: -len(ending)]
        if len(stem) > 5 and stem[-5] == "_" and stem[-4:].isdigit():  # nnU-Net's <case>_<channel>
            if stem[-5:] != CHANNEL:
                continue  # another channel of a case listed under _0000
            stem = stem[:-5]
        if safe_id(stem) != stem:
            raise InputError(f"{image}: the case name {stem!r} is not a portable file name; rename the file")
        found.append((stem, str(image)))
        label = folder / "labelsTr" / f"{stem}{ending}"
        labels.append(str(label) if label.is_file() else None)
    if not found:
        raise InputError(f"{folder / 'imagesTr'} holds no image ending in {ending}")
    cases = tuple(CampaignCase(c.id, c.image, c.label) for c in with_unique_ids(found, labels))
    return Source(NNUNET, str(folder), str(folder), cases, tuple(classes), ending)


def _batch_source(folder: Path) -> Source:
    records = Records(folder).all()
    if not records:
        raise InputError(f"{folder} has a results.csv but no case records: is it a `segvol batch` output folder?")
    confidences = _batch_confidence(folder / "stats.csv")
    cases = []
    for case_id in sorted(records):
        record = records[case_id]
        outputs = [name for name in record.get("outputs", {}) if name.endswith(".seg.nrrd")]
        result = str(folder / outputs[0]) if record.get("status") == "ok" and outputs else None
        lowest, low = confidences.get(case_id, (None, ()))
        cases.append(CampaignCase(case_id, str(record["image"]), result, lowest, low))
    return Source(BATCH, str(folder), str(folder), tuple(cases))


def _batch_confidence(stats: Path) -> dict[str, tuple[float | None, tuple[str, ...]]]:
    """Per case: the lowest mean probability of its segments and the segments of low confidence."""
    if not stats.is_file():
        return {}
    found: dict[str, tuple[float | None, tuple[str, ...]]] = {}
    with open(stats, newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            values = {key: (row.get(key) or None) for key in ("mean_probability", "uncertain_share")}
            if values["mean_probability"] is None and row.get("low_confidence", "") == "":
                continue  # no confidence known for this segment
            confidence = Confidence.from_dict(values)
            lowest, low = found.get(row["case"], (None, ()))
            mean = confidence.mean_probability if confidence.mean_probability is not None else 0.0
            lowest = mean if lowest is None else min(lowest, mean)
            found[row["case"]] = (lowest, low + ((row["segment"],) if confidence.low else ()))
    return found
