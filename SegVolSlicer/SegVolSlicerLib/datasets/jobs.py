"""The per-case work of a run: a job reads one case, runs the engine host on it, writes the case's outputs into
its staging folder and commits its record (see `records`), wherever it runs. A job is picklable: the same
object runs in this process or in Ray actors. Its fingerprint covers everything that changes its outputs.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__, runtime
from ..engine import EngineHost, ModelChoice, SessionOptions, VolumeInput
from ..errors import Cancelled, InputError, SegVolError
from ..files import atomic_output
from ..imageio import read_ct, read_label_volume
from ..prompts import plan_targets
from ..reporting import NO_REPORT, Reporter
from .cases import Case
from .records import Records, fingerprint_of


def failure_message(error: BaseException) -> str:
    if isinstance(error, SegVolError):
        return str(error)
    if isinstance(error, MemoryError) or (isinstance(error, RuntimeError) and runtime.is_out_of_memory(error)):
        return "out of memory: use a machine with more memory or a smaller volume"
    first_line = (str(error).strip().splitlines() or [""])[0][:300]
    return f"{type(error).__name__}: {first_line}".rstrip(": ")


@dataclass(frozen=True)
class Job(ABC):
    """What to do with each case; picklable (it travels to Ray actors). `checkpoint_id` names the weights
    (their sha256), set by the driver before the run."""

    choice: ModelChoice
    options: SessionOptions
    output_dir: str
    zoom_in: bool = True
    checkpoint_id: str = ""

    def make_host(self) -> EngineHost:
        return EngineHost(self.choice, max_sessions=1, session_options=self.options)

    def description(self) -> dict:
        """Everything that changes the outputs (what the fingerprint hashes); subclasses add their own."""
        sampling = self.options.point_sampling
        return {
            "job": type(self).__name__,
            "checkpoint": self.checkpoint_id,
            "precision": self.choice.precision,
            "zoom_in": self.zoom_in,
            "point_sampling": sampling,
            "seed": self.options.seed if sampling == "seeded" else None,
            "version": __version__,
        }

    def fingerprint(self) -> str:
        return fingerprint_of(self.description())

    @abstractmethod
    def run(self, host: EngineHost, case: Case, staging: Path, reporter: Reporter) -> list[str]:
        """Does the case, writes its outputs under `staging` (at their paths relative to the output folder);
        returns its warnings."""

    def run_case(self, host: EngineHost, case: Case, reporter: Reporter = NO_REPORT) -> dict:
        """Does the case and commits its record (here or in a Ray actor), which it returns; a failure of this
        case is a `failed` record, never an exception (except cancelling, which stops the run). The engine's
        notices (e.g. the CPU fallback) go into its warnings."""
        records = Records(self.output_dir)
        start = time.perf_counter()
        notices = CaseNotices(reporter)
        try:
            staging = records.start(case.id)
            warnings, status, error = self.run(host, case, staging, notices), "ok", ""
        except (Cancelled, KeyboardInterrupt):
            raise
        except Exception as failure:  # noqa: BLE001 - every failure of one case is recorded, the others go on
            warnings, status, error = [], "failed", failure_message(failure)
        finally:
            host.forget(case.id)  # one CT at a time: its session (embeddings) is not needed again
        return records.commit(
            {
                "id": case.id,
                "image": case.image,
                "status": status,
                "seconds": f"{time.perf_counter() - start:.2f}",
                "warnings": "; ".join(notices.messages + warnings),
                "error": error,
                "fingerprint": self.fingerprint(),
            }
        )


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

    def description(self) -> dict:
        return {**super().description(), "texts": list(self.texts), "output_format": self.output_format}

    def output_name(self, case: Case) -> str:
        return f"{case.id}{OUTPUT_ENDINGS[self.output_format]}"

    @staticmethod
    def stats_name(case: Case) -> str:
        return f"stats/{case.id}.csv"

    def run(self, host: EngineHost, case: Case, staging: Path, reporter: Reporter) -> list[str]:
        from ..clinical.outputs import check_output_request, write_outputs

        check_output_request(staging / self.output_name(case), case.image, probabilities=False, remote=False)
        volume = read_ct(case.image)
        targets = plan_targets(list(self.texts), None, None, unnamed="SegVol 1")
        results = host.segment(
            VolumeInput(case.id, volume.array, volume.ijk_to_ras), targets, zoom_in=self.zoom_in, reporter=reporter
        )
        warnings = [w for result in results for w in result.warnings]
        stats = staging / self.stats_name(case)
        stats.parent.mkdir(exist_ok=True)
        return warnings + write_outputs(
            staging / self.output_name(case), results, volume, case.image, targets, self.choice.weights, stats=stats
        )

    def combine_statistics(self, cases: Sequence[Case], statuses: dict[str, str]) -> None:
        """OUT/stats.csv: the committed statistics of every case recorded ok, in input order."""
        from ..clinical.statistics import combine_statistics_files

        output_dir = Path(self.output_dir)
        files = [
            (c.id, output_dir / self.stats_name(c))
            for c in cases
            if statuses.get(c.id) == "ok" and (output_dir / self.stats_name(c)).exists()
        ]
        combine_statistics_files(files, output_dir / "stats.csv")


@dataclass(frozen=True)
class EvaluateJob(Job):
    """`segvol evaluate --dataset`: per prompt mode, OUT/cases/<id>/<prompt>/ holds what `segvol evaluate`
    writes for the case (masks, metrics.csv); OUT/cases/<id>/metrics.csv all of its rows."""

    classes: tuple[tuple[str, int], ...] = ()
    prompts: tuple[str, ...] = ("text+box",)

    def description(self) -> dict:
        return {**super().description(), "classes": [list(c) for c in self.classes], "prompts": list(self.prompts)}

    @staticmethod
    def metrics_name(case: Case) -> str:
        return f"cases/{case.id}/metrics.csv"

    def run(self, host: EngineHost, case: Case, staging: Path, reporter: Reporter) -> list[str]:
        from ..evaluation import evaluate_case, metrics_csv

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
            results = evaluate_case(
                host,
                VolumeInput(case.id, volume.array, volume.ijk_to_ras),
                volume.reference,
                labels,
                classes,
                prompt,
                staging / "cases" / case.id / prompt,
                zoom_in=self.zoom_in,
                reporter=reporter,
            )
            for result in results:
                warnings += [w for w in result.warnings if w not in warnings]
                rows.append({"case": case.id, **result.row()})
        with atomic_output(staging / self.metrics_name(case)) as tmp:
            tmp.write_text(metrics_csv(rows), encoding="utf-8")
        return warnings
