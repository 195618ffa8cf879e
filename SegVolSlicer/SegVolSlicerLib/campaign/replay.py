"""Replaying a campaign: each accepted case's recorded AI steps run again (e.g. with new weights) through the
engine, in the order they ran, into a new folder, with Dice against the accepted label.

    OUT/cases/<id>/<id>.seg.nrrd     the replayed segments
    OUT/cases/<id>/metrics.csv       Dice per segment against the accepted label (prompt: "replay")
    OUT/metrics.csv, summary.csv, dice.png   as the dataset evaluation writes them (datasets/tables.py)

It is a dataset job (datasets/jobs.py): resumable, per-case records, here or on Ray; its fingerprint covers the
records it replays. With the weights and options the steps were made with, a case without hand edits comes
back bit for bit. Hand edits are not replayed (a record counts them), nor are "from-mask" steps (their mask
was the segment as it was then): the case's warnings say so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..clinical.outputs import write_segmentation_results
from ..datasets.cases import Case
from ..datasets.jobs import Job
from ..datasets.records import read_json
from ..engine import Engine, TargetJob, VolumeInput
from ..errors import InputError
from ..evaluation import dice, metrics_csv
from ..files import atomic_output, file_sha256
from ..imageio import read_ct
from ..reporting import Reporter
from .campaign import Campaign
from .labels import read_label
from .records import CORRECTION, FROM_MASK, record_path, target_from_json
from .state import ACCEPTED

PROMPT = "replay"


def replay_steps(
    host: Engine, volume: VolumeInput, steps: Sequence[dict], reporter: Reporter, zoom_in: bool = True
) -> tuple[dict, list]:
    """The last result per segment name after running `steps` in order, and the warnings. `zoom_in` False: every
    step without SegVol's zoom-in (corrections then run the official pipeline, as the panel does)."""
    latest, warnings = {}, []
    for step in steps:
        targets, step_zoom_in = [target_from_json(t) for t in step["targets"]], step["zoom_in"] and zoom_in
        if step["mode"] == FROM_MASK:
            warnings.append(f"a from-mask step on {', '.join(t.name for t in targets)} is not replayed")
            continue
        # A correction starts from its segment's last result (the engine keeps it under the segment's name).
        jobs = [TargetJob(t, result_key=t.name, correct=step["mode"] == CORRECTION) for t in targets]
        for target, result in zip(targets, host.segment(volume, jobs, step_zoom_in, reporter)):
            latest[target.name] = result
    return latest, warnings


@dataclass(frozen=True)
class ReplayJob(Job):
    """`segvol campaign replay`: Case.label is the accepted label; the record lies beside it."""

    campaign_folder: str = ""
    classes: tuple[tuple[str, int], ...] = ()  # dataset.json's, for label maps
    records: tuple[tuple[str, str], ...] = ()  # (case, sha256 of its record): what is replayed

    def description(self) -> dict:
        return {**super().description(), "records": [list(r) for r in self.records]}

    @staticmethod
    def metrics_name(case: Case) -> str:
        return f"cases/{case.id}/metrics.csv"

    def run(self, host: Engine, case: Case, staging: Path, reporter: Reporter) -> list[str]:
        record = read_json(record_path(case.label))
        if record is None:
            raise InputError(f"{case.id}: no record beside {case.label}")
        volume = read_ct(case.image, case.series, self.allow_gaps)
        accepted = {s.name: s.mask for s in read_label(case.label, volume, self.classes)}
        latest, warnings = replay_steps(
            host, VolumeInput(case.id, volume.array, volume.ijk_to_ras), record.get("steps", []), reporter, self.zoom_in
        )
        edited = [f"{name} ({count})" for name, count in record.get("hand_edits", {}).items() if count]
        if edited:
            warnings.append(f"hand edits are not replayed: {', '.join(edited)}")
        rows = []
        for number, (name, result) in enumerate(latest.items(), start=1):
            truth = accepted.get(name)
            if truth is None:
                warnings.append(f"{name} is not in the accepted label (removed or renamed): no Dice")
                continue
            value = dict(self.classes).get(name, number)
            rows.append(
                {
                    "case": case.id,
                    "class": name,
                    "label": value,
                    "prompt": PROMPT,
                    "dice": dice(result.mask, truth),
                    "zoom_out_dice": dice(result.zoom_out_mask, truth),
                    "windows": result.windows,
                }
            )
        folder = staging / "cases" / case.id
        folder.mkdir(parents=True, exist_ok=True)
        if latest:
            warnings += write_segmentation_results(folder / f"{case.id}.seg.nrrd", list(latest.values()), volume)
        if not rows:
            raise InputError(f"{case.id}: nothing to compare (its record has no replayable step)")
        with atomic_output(staging / self.metrics_name(case)) as tmp:
            tmp.write_text(metrics_csv(rows), encoding="utf-8")
        return warnings


def replay_cases(campaign: Campaign) -> tuple[list[Case], tuple[tuple[str, str], ...]]:
    """The accepted cases that have a record, as dataset cases (label: the accepted label), and their checksums."""
    source, states = campaign.source, campaign.all_states()
    cases, records = [], []
    for case in sorted(source.cases, key=lambda c: c.id):
        label = source.label_path(case.id)
        if states[case.id].status == ACCEPTED and label.is_file() and record_path(label).is_file():
            cases.append(Case(case.id, case.image, str(label)))
            records.append((case.id, file_sha256(record_path(label))))
    if not cases:
        raise InputError(f"{source.folder} has no accepted case with a record: nothing to replay")
    return cases, tuple(records)
