"""The per-case work of a run: a job reads one case, runs the engine host on it, writes the case's outputs
atomically and returns its row of results.csv. A job is picklable: the same object runs in this process or in
Ray actors.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import runtime
from ..engine import EngineHost, ModelChoice, SessionOptions, VolumeInput
from ..errors import Cancelled, InputError, SegVolError
from ..evaluation import evaluate_classes, metrics_csv
from ..imageio import atomic_output, read_ct, read_label_volume, write_mask
from ..prompts import plan_targets
from ..reporting import NO_REPORT, Reporter
from .cases import Case, safe_id


def failure_message(error: BaseException) -> str:
    if isinstance(error, SegVolError):
        return str(error)
    if isinstance(error, MemoryError) or (isinstance(error, RuntimeError) and runtime.is_out_of_memory(error)):
        return "out of memory: use a machine with more memory or a smaller volume"
    first_line = (str(error).strip().splitlines() or [""])[0][:300]
    return f"{type(error).__name__}: {first_line}".rstrip(": ")


@dataclass(frozen=True)
class Job(ABC):
    """What to do with each case; picklable (it travels to Ray actors)."""

    choice: ModelChoice
    options: SessionOptions
    output_dir: str
    zoom_in: bool = True

    def make_host(self) -> EngineHost:
        return EngineHost(self.choice, max_sessions=1, session_options=self.options)

    def is_done(self, case: Case, row: dict | None) -> bool:
        """Recorded `ok` and its outputs still there."""
        return row is not None and row.get("status") == "ok" and self.output_of(case).exists()

    @abstractmethod
    def output_of(self, case: Case) -> Path:
        """The file whose presence (with an `ok` row) says the case is done: the last one the case writes."""

    @abstractmethod
    def run(self, host: EngineHost, case: Case, reporter: Reporter) -> list[str]:
        """Does the case, writes its outputs; returns its warnings."""

    def run_case(self, host: EngineHost, case: Case, reporter: Reporter = NO_REPORT) -> dict:
        """The case's results.csv row; a failure of this case is a `failed` row, never an exception (except
        cancelling, which stops the run). The engine's notices (e.g. the CPU fallback) go into its warnings."""
        start = time.perf_counter()
        notices = CaseNotices(reporter)
        try:
            warnings, status, error = self.run(host, case, notices), "ok", ""
        except (Cancelled, KeyboardInterrupt):
            raise
        except Exception as failure:  # noqa: BLE001 - every failure of one case is recorded, the others go on
            warnings, status, error = [], "failed", failure_message(failure)
        finally:
            host.forget(case.id)  # one CT at a time: its session (embeddings) is not needed again
        return {
            "id": case.id,
            "image": case.image,
            "status": status,
            "seconds": f"{time.perf_counter() - start:.2f}",
            "warnings": "; ".join(notices.messages + warnings),
            "error": error,
        }


class CaseNotices(Reporter):
    """Passes progress on and keeps the notices of one case for its row (after a GPU ran out of memory, the
    following cases run on the CPU: results.csv says where that began)."""

    def __init__(self, outer: Reporter):
        super().__init__(outer.cancel)
        self.outer, self.messages = outer, []

    def progress(self, stage: str, done: int, total: int) -> None:
        self.outer.progress(stage, done, total)

    def notice(self, message: str) -> None:
        self.messages.append(message)
        self.outer.notice(message)


OUTPUT_ENDINGS = {"seg-nrrd": ".seg.nrrd", "dicom-seg": ".dcm"}


@dataclass(frozen=True)
class SegmentJob(Job):
    """`segvol batch`: each text is one named segment of OUT/<id>.seg.nrrd (or OUT/<id>.dcm, a DICOM SEG), with
    the case's statistics in OUT/stats/<id>.csv (combined into OUT/stats.csv after the run)."""

    texts: tuple[str, ...] = ()
    output_format: str = "seg-nrrd"  # a key of OUTPUT_ENDINGS

    def output_of(self, case: Case) -> Path:
        return Path(self.output_dir) / f"{case.id}{OUTPUT_ENDINGS[self.output_format]}"

    def stats_of(self, case: Case) -> Path:
        return Path(self.output_dir) / "stats" / f"{case.id}.csv"

    def run(self, host: EngineHost, case: Case, reporter: Reporter) -> list[str]:
        from ..clinical.outputs import check_output_request, write_outputs

        check_output_request(self.output_of(case), case.image, probabilities=False, remote=False)
        volume = read_ct(case.image)
        targets = plan_targets(list(self.texts), None, None, unnamed="SegVol 1")
        results = host.segment(
            VolumeInput(case.id, volume.array, volume.ijk_to_ras), targets, zoom_in=self.zoom_in, reporter=reporter
        )
        warnings = [w for result in results for w in result.warnings]
        self.stats_of(case).parent.mkdir(exist_ok=True)
        output = self.output_of(case)
        return warnings + write_outputs(
            output, results, volume, case.image, targets, self.choice.weights, stats=self.stats_of(case)
        )

    def combine_statistics(self, cases: Sequence[Case], statuses: dict[str, str]) -> None:
        """OUT/stats.csv: the statistics of every case recorded ok, in input order."""
        from ..clinical.statistics import combine_statistics_files

        files = [(c.id, self.stats_of(c)) for c in cases if statuses.get(c.id) == "ok" and self.stats_of(c).exists()]
        combine_statistics_files(files, Path(self.output_dir) / "stats.csv")


@dataclass(frozen=True)
class EvaluateJob(Job):
    classes: tuple[tuple[str, int], ...] = ()
    prompts: tuple[str, ...] = ("text+box",)

    def case_dir(self, case: Case) -> Path:
        return Path(self.output_dir) / "cases" / case.id

    def output_of(self, case: Case) -> Path:
        return self.case_dir(case) / "metrics.csv"

    def run(self, host: EngineHost, case: Case, reporter: Reporter) -> list[str]:
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
