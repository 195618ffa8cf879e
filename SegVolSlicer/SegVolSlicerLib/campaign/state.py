"""Where each case of a campaign stands, kept in the campaign folder so that it resumes where it stopped.

    STATE/campaign.json        the source it was opened from
    STATE/cases/<id>.json      {"id", "status", "annotator", "seconds", "comment", "updated"}

One small file per case, written atomically by the annotator holding the case's lock: two annotators never
write the same file, so neither overwrites the other's progress. A case without a file is new.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from ..datasets.records import read_json, write_json

STATE_DIR = ".segvol-campaign"
NEW, IN_PROGRESS, ACCEPTED, FLAGGED, SKIPPED = "new", "in progress", "accepted", "flagged", "skipped"
STATUSES = (NEW, IN_PROGRESS, ACCEPTED, FLAGGED, SKIPPED)


@dataclass(frozen=True)
class CaseState:
    id: str
    status: str = NEW
    annotator: str = ""  # who last worked on it
    seconds: float = 0.0  # active time spent on it, all sessions together
    comment: str = ""  # a flag's comment
    updated: float = 0.0  # when (seconds since the epoch)


class States:
    def __init__(self, state_dir: str | Path):
        self.folder = Path(state_dir) / "cases"

    def read(self, case_id: str) -> CaseState:
        content = read_json(self.folder / f"{case_id}.json")
        if content is None or content.get("status") not in STATUSES:
            return CaseState(case_id)
        fields = {k: content[k] for k in ("status", "annotator", "seconds", "comment", "updated") if k in content}
        return CaseState(case_id, **fields)

    def write(self, state: CaseState) -> None:
        write_json(self.folder / f"{state.id}.json", asdict(state))


@dataclass(frozen=True)
class Progress:
    """A campaign's progress: counts per status, accepted per annotator, the flagged cases and their comments."""

    total: int
    counts: dict[str, int]
    accepted_by: dict[str, int]
    flagged: list[tuple[str, str, str]]  # (case, annotator, comment)

    @classmethod
    def of(cls, states: list[CaseState]) -> Progress:
        counts = Counter(s.status for s in states)
        accepted_by = Counter(s.annotator for s in states if s.status == ACCEPTED)
        flagged = [(s.id, s.annotator, s.comment) for s in states if s.status == FLAGGED]
        return cls(len(states), {k: counts.get(k, 0) for k in STATUSES}, dict(sorted(accepted_by.items())), flagged)

    @property
    def summary(self) -> str:
        """E.g. "34 of 120 accepted (2 flagged, 1 skipped, 3 in progress)"."""
        others = [f"{self.counts[k]} {k}" for k in (FLAGGED, SKIPPED, IN_PROGRESS) if self.counts[k]]
        more = f" ({', '.join(others)})" if others else ""
        return f"{self.counts[ACCEPTED]} of {self.total} accepted{more}"
