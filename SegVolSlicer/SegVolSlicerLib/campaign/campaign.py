"""A campaign: an annotator working through the cases of a source, one open case at a time.

    campaign = Campaign.open("Dataset501_Liver", annotator="ann")
    case = campaign.next_case()                     # locked for "ann", status "in progress"
    loaded = case.load()                            # the CT and its existing result (any thread: files only)
    case.record_step(OFFICIAL, targets, zoom_in=True, confidences=...)   # each AI step, in order
    case.note_hand_edit("liver")                    # each edit by hand
    case.accept(segments, loaded.volume)            # the label, its record beside it, status "accepted"

Qt-free and MRML-free: the Slicer section and the CLI are faces over it. A case's work in progress (its AI
steps, hand edits, time) is kept in STATE/work/<id>.json after every change, so closing Slicer and opening the
case again continues its record.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from ..clinical.confidence import Confidence
from ..datasets.records import CheckpointHashes, read_json, write_json
from ..errors import InputError
from ..files import file_sha256
from ..prompts import Target
from .locks import CaseLocked, Lock, Locks
from .order import is_open, ordered
from .records import confidence_json, record_path, segvol_identity, step_json
from .sources import NNUNET, CampaignCase, Source, open_source
from .state import ACCEPTED, FLAGGED, IN_PROGRESS, SKIPPED, STATE_DIR, CaseState, Progress, States

if TYPE_CHECKING:  # SimpleITK is imported on first use: Slicer imports this before it installs SimpleITK
    from ..imageio import Segment, Volume

IDLE_S = 300.0  # a pause longer than this between two actions on a case is not counted as active time


class InputLabelExists(InputError):
    """Accepting would replace a label the dataset came with: the face asks, then accepts with replace_input."""


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


@dataclass
class LoadedCase:
    volume: Volume
    segments: list[Segment]  # its existing result (accepted before, the batch's, or the dataset's label)
    result: str | None  # the file they came from


class Campaign:
    def __init__(self, source: Source, annotator: str | None = None, clock=time.time):
        """`annotator` None: a view of the campaign (its progress), which opens no case."""
        self.source, self.annotator, self.clock = source, (annotator or "").strip(), clock
        self.state_dir = Path(source.folder) / STATE_DIR
        self.locks = Locks(self.state_dir, clock)
        self.states = States(self.state_dir)

    @classmethod
    def open(cls, path: str | os.PathLike, annotator: str | None = None, clock=time.time) -> Campaign:
        """The campaign of a source, or of a campaign folder opened before (a CSV manifest's folder)."""
        known = read_json(Path(path).expanduser() / STATE_DIR / "campaign.json")
        source = open_source(known["source"] if known and Path(path).is_dir() and known.get("source") else path)
        campaign = cls(source, annotator, clock)
        if campaign.annotator and (known is None or known.get("source") != source.path):
            campaign.state_dir.mkdir(parents=True, exist_ok=True)
            write_json(campaign.state_dir / "campaign.json", {"source": source.path, "kind": source.kind})
        return campaign

    # --- the queue ---

    def state(self, case_id: str) -> CaseState:
        return self.states.read(case_id)

    def all_states(self) -> dict[str, CaseState]:
        return {case.id: self.states.read(case.id) for case in self.source.cases}

    def progress(self) -> Progress:
        return Progress.of(list(self.all_states().values()))

    def ordered_cases(self, order: str = "attention") -> list[CampaignCase]:
        return ordered(self.source.cases, self.all_states(), self.annotator, order)

    def next_case(self, order: str = "attention", after: str | None = None) -> OpenCase | None:
        """The first case in `order` that is open (new, in progress, skipped) and not opened by another
        annotator, opened for this one; `after`: a case to pass over (the one just skipped). None: all done."""
        states = self.all_states()
        for case in ordered(self.source.cases, states, self.annotator, order):
            if case.id == after or not is_open(states[case.id]):
                continue
            holder = self.locks.holder(case.id)
            if holder is not None and holder.get("owner") != self.annotator:
                continue
            try:
                return self.open_case(case.id)
            except CaseLocked:  # another annotator opened it just now
                continue
        return None

    def open_case(self, case_id: str) -> OpenCase:
        """Open one case for this annotator (CaseLocked when another annotator has it open)."""
        if not self.annotator:
            raise InputError("give the annotator's name (it is written into every record and lock)")
        case = self.source.case(case_id)
        lock, message = self.locks.acquire(case_id, self.annotator)
        state = self.states.read(case_id)
        read_only = state.status == ACCEPTED and state.annotator != self.annotator  # theirs to change
        if not read_only:
            self.states.write(replace(state, status=IN_PROGRESS, annotator=self.annotator, updated=self.clock()))
        return OpenCase(self, case, lock, message, read_only)


class OpenCase:
    """A case opened by one annotator: it holds the case's lock until `close`, `accept`, `flag` or `skip`."""

    def __init__(self, campaign: Campaign, case: CampaignCase, lock: Lock, message: str | None, read_only=False):
        self.campaign, self.case, self.lock = campaign, case, lock
        self.read_only = read_only  # accepted by another annotator: shown, never changed
        self.message = message  # e.g. a stale lock was taken over
        self.work_path = campaign.state_dir / "work" / f"{case.id}.json"
        now = campaign.clock()
        self.work = read_json(self.work_path) or {
            "started": now,
            "active_seconds": 0.0,
            "steps": [],
            "hand_edits": {},
            "confidence_before": {},
        }
        self.last_action = now
        self.closed = False

    @property
    def label_path(self) -> Path:
        return self.campaign.source.label_path(self.case.id)

    # --- reading ---

    def load(self) -> LoadedCase:
        """The CT and the case's existing result: its accepted label, else the batch's segmentation or the
        dataset's label map (files only: any thread)."""
        from ..imageio import read_ct
        from .labels import read_label

        volume = read_ct(self.case.image)
        own = self.label_path if self.label_path.is_file() else None
        result = str(own) if own is not None else self.case.result
        segments = read_label(result, volume, self.campaign.source.classes) if result else []
        if not self.work["steps"] and not self.work["confidence_before"]:
            tags = {s.name: Confidence.from_tags(_tags(s.fields.get("Tags", ""))) for s in segments}
            self.work["confidence_before"] = {name: confidence_json(c) for name, c in tags.items() if c is not None}
        return LoadedCase(volume, segments, result)

    # --- what the annotator does ---

    def touch(self) -> None:
        """Count the time since the last action as active (up to IDLE_S) and keep the work in progress."""
        now = self.campaign.clock()
        self.work["active_seconds"] += min(max(now - self.last_action, 0.0), IDLE_S)
        self.last_action = now
        self._save_work()

    def record_step(
        self,
        mode: str,
        targets: Sequence[Target],
        zoom_in: bool,
        sources: Sequence[str] = (),
        confidences: Sequence[Confidence | None] = (),
    ) -> None:
        """One AI step whose results were written into the case's segments (in the order they ran)."""
        self.work["steps"].append(step_json(mode, targets, zoom_in, sources, confidences))
        self.touch()

    def note_hand_edit(self, segment: str) -> None:
        self.work["hand_edits"][segment] = self.work["hand_edits"].get(segment, 0) + 1
        self.touch()

    def heartbeat(self) -> None:
        """Keep the lock alive (LockLost when it was taken over meanwhile)."""
        self.campaign.locks.heartbeat(self.lock)

    # --- ending ---

    def accept(
        self,
        segments: Sequence[Segment],
        volume: Volume,
        weights: str | None = None,
        weights_sha256: str | None = None,
        replace_input: bool = False,
    ) -> Path:
        """Write the label atomically and its record beside it (with the weights' sha256 when `weights` is a
        file and no `weights_sha256` is given); the case becomes accepted. Refuses to replace
        a label the dataset came with unless `replace_input` (the original is kept in STATE/originals/), and a
        label another annotator accepted."""
        from .labels import write_label

        campaign, path = self.campaign, self.label_path
        campaign.locks.check(self.lock)
        if self.read_only:
            state = campaign.states.read(self.case.id)
            raise InputError(f"case {self.case.id} was accepted by {state.annotator}: their label is not replaced")
        previous = read_json(record_path(path))
        if path.is_file() and not self._is_own(path, previous):
            if not replace_input:
                raise InputLabelExists(
                    f"{path} is a label the dataset came with: confirm to replace it (the original is kept in "
                    f"{campaign.state_dir / 'originals'})"
                )
            originals = campaign.state_dir / "originals"
            originals.mkdir(parents=True, exist_ok=True)
            if not (originals / path.name).exists():
                shutil.copy2(path, originals / path.name)
        if weights_sha256 is None and weights and Path(weights).is_file():  # cached: weights files are GBs
            weights_sha256 = CheckpointHashes(campaign.state_dir / "checkpoints.json").of(Path(weights))
        self.touch()
        write_label(path, segments, volume, campaign.source.classes)
        now = campaign.clock()
        work, values = self.work, dict(campaign.source.classes)
        after = {}
        for step in work["steps"]:
            after.update(step["confidence"])
        record = {
            "case": self.case.id,
            "image": self.case.image,
            "label": os.path.relpath(path, campaign.source.folder),
            "label_sha256": file_sha256(path),
            "annotator": campaign.annotator,
            "started": _iso(work["started"]),
            "ended": _iso(now),
            "active_seconds": round(work["active_seconds"], 1),
            "segvol": segvol_identity(weights, weights_sha256),
            "steps": work["steps"],
            "hand_edits": work["hand_edits"],
            "segments": [
                {
                    "name": s.name,
                    "value": values.get(s.name, number + 1) if campaign.source.kind == NNUNET else number + 1,
                    "voxels": int((s.mask > 0).sum()),
                    "confidence_before": work["confidence_before"].get(s.name),
                    "confidence_after": after.get(s.name),
                    "hand_edits": work["hand_edits"].get(s.name, 0),
                }
                for number, s in enumerate(segments)
            ],
            "previous_label_sha256": previous.get("label_sha256") if previous else None,
        }
        write_json(record_path(path), record)
        self._end(ACCEPTED)
        self.work_path.unlink(missing_ok=True)
        return path

    def flag(self, comment: str) -> None:
        """Needs someone else's look (the comment says why); the work so far is kept."""
        self.touch()
        self._end(FLAGGED, comment.strip())

    def skip(self) -> None:
        self.touch()
        self._end(SKIPPED)

    def close(self) -> None:
        """Stop working on the case for now: it stays in progress, its work kept; the lock is released."""
        if self.closed:
            return
        self.touch()
        self._end(IN_PROGRESS)

    def _end(self, status: str, comment: str = "") -> None:
        campaign = self.campaign
        campaign.locks.check(self.lock)
        if self.read_only:
            campaign.locks.release(self.lock)
            self.closed = True
            return
        old = campaign.states.read(self.case.id)
        seconds = old.seconds + self.work["active_seconds"] - self.work.get("counted_seconds", 0.0)
        self.work["counted_seconds"] = self.work["active_seconds"]
        self._save_work()
        campaign.states.write(
            CaseState(self.case.id, status, campaign.annotator, round(seconds, 1), comment, campaign.clock())
        )
        campaign.locks.release(self.lock)
        self.closed = True

    def _save_work(self) -> None:
        write_json(self.work_path, self.work)

    def _is_own(self, path: Path, record: dict | None) -> bool:
        """The label at `path` was written by this campaign (its record has its checksum)."""
        return record is not None and record.get("label_sha256") == file_sha256(path)


def _tags(text: str) -> dict[str, str]:
    return dict(item.split(":", 1) for item in text.split("|") if ":" in item)
