"""Whole datasets: `segvol batch` (segment every CT) and `segvol evaluate --dataset`, here or on a Ray cluster.

    cases = discover_cases(["scans/", "more.nii.gz", "manifest.csv"])
    run_cases(SegmentJob(choice, options, ("liver", "spleen"), zoom_in=True, output_dir=out), cases, out)

A job's `run_case(host, case)` is the per-case function: it reads the case, runs the engine host on one session
(all names of a CT share its embeddings), writes the case's outputs atomically, forgets the session and
returns the case's row of results.csv; any failure of the case becomes a `failed` row. The same function runs
in this process (one model) or inside Ray Data actors (one model per actor; rows carry file paths, never
voxels). The driver rewrites results.csv atomically after every case, so a run killed at any moment leaves
complete files only, and a rerun skips the cases recorded `ok` whose outputs exist and redoes the others.
"""

from __future__ import annotations

import csv
import io
import os
import re
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .engine import EngineHost, ModelChoice, SessionOptions, VolumeInput
from .errors import Cancelled, InputError, SegVolError
from .reporting import NO_REPORT, Reporter

IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
RESULT_FIELDS = ("id", "image", "status", "seconds", "warnings", "error")
RESULTS_NAME = "results.csv"


# --- what segvol segment and segvol batch share ---


def read_ct(path):
    """The CT, checked before the model runs (seconds) so that a bad volume fails at once."""
    from .imageio import read_volume
    from .inference.preprocess import check_volume

    volume = read_volume(path)
    check_volume(volume.array)
    return volume


def write_segmentation_results(output: Path, results, volume, existing=()) -> list[str]:
    """The engine's results as `segvol segment` writes them (one named segment per target, Slicer's colours
    and terminology), merged into `existing` segments; returns the writer's warnings."""
    from .imageio import Segment, merge_segments, write_segmentation

    segments = [Segment.for_target(result.name, result.text, result.mask) for result in results]
    return write_segmentation(output, merge_segments(existing, segments), volume.reference)


# --- cases ---


@dataclass(frozen=True)
class Case:
    id: str  # unique in the run, safe as a file name
    image: str  # absolute path of a CT file or DICOM folder
    label: str | None = None  # absolute path of its label map (evaluation)


def _is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(IMAGE_ENDINGS)


def _stem(path: Path) -> str:
    name = path.name
    for ending in IMAGE_ENDINGS:
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return path.stem if path.is_file() else name


def safe_id(text: str) -> str:
    """`text` as a portable file name: letters, digits, '.', '_' and '-' kept, runs of anything else -> '_'."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return cleaned or "case"


def _manifest_rows(path: Path, columns: Sequence[str]) -> list[dict]:
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


def _resolve(text: str, folder: Path) -> str:
    path = Path(text).expanduser()
    return str((path if path.is_absolute() else folder / path).resolve())


def discover_cases(inputs: Iterable[str | os.PathLike]) -> list[Case]:
    """The cases of INPUT...: image files; folders (each NIfTI/NRRD/MHA file in it is a case, a folder of other
    files is one DICOM case); CSV manifests (column `image`, optional `id`, paths relative to the CSV).
    The same image named twice is one case."""
    found: list[tuple[str | None, str]] = []  # (id from a manifest or None, image)
    for given in inputs:
        path = Path(given).expanduser()
        if not path.exists():
            raise InputError(f"input not found: {path}")
        if path.is_file() and path.suffix.lower() == ".csv":
            found += [
                (row.get("id") or None, _resolve(row["image"], path.parent)) for row in _manifest_rows(path, ["image"])
            ]
        elif path.is_dir():
            images = sorted(p for p in path.iterdir() if _is_image_file(p))
            if images:
                found += [(None, str(p.resolve())) for p in images]
            elif any(p.is_file() and not p.name.startswith(".") for p in path.iterdir()):
                found.append((None, str(path.resolve())))
            else:
                raise InputError(
                    f"{path} holds no NIfTI/NRRD/MHA file and no DICOM files: give CT files, "
                    "folders of them, DICOM folders or a CSV manifest"
                )
        else:  # a file named explicitly is a case whatever its name; a file that is no CT fails as a case
            found.append((None, str(path.resolve())))
    return _with_unique_ids(found)


def _with_unique_ids(found: Sequence[tuple[str | None, str]], labels: Sequence[str | None] | None = None) -> list[Case]:
    """Cases with ids from the manifest (must be unique) or from the file names (numbered when they clash)."""
    labels = labels or [None] * len(found)
    cases, seen_images, used = [], set(), set()
    given = [safe_id(i) for i, _ in found if i is not None]
    duplicates = sorted({i for i in given if given.count(i) > 1})
    if duplicates:
        raise InputError(
            f"the manifest gives the id(s) {', '.join(duplicates)} to several images: ids must be "
            "unique (they name the output files)"
        )
    used.update(given)
    for (given_id, image), label in zip(found, labels):
        if image in seen_images:
            continue
        seen_images.add(image)
        case_id = safe_id(given_id) if given_id is not None else safe_id(_stem(Path(image)))
        if given_id is None:
            base, number = case_id, 1
            while case_id in used:
                number += 1
                case_id = f"{base}-{number}"
            used.add(case_id)
        cases.append(Case(case_id, image, label))
    return cases


# --- results.csv ---


def read_results(path: Path) -> dict[str, dict]:
    """The rows of a previous run's results.csv by id (none if there is no file)."""
    if not path.is_file():
        return {}
    try:
        with open(path, newline="", encoding="utf-8") as file:
            return {row["id"]: row for row in csv.DictReader(file) if row.get("id")}
    except (OSError, UnicodeDecodeError, csv.Error, KeyError) as error:
        raise InputError(f"cannot read {path} of an earlier run ({error}): move it away to start afresh") from None


def write_results(path: Path, rows: Iterable[dict]) -> None:
    from .imageio import atomic_output

    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=RESULT_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_output(path) as tmp:
        tmp.write_text(table.getvalue(), encoding="utf-8")


def _failure_message(error: BaseException) -> str:
    if isinstance(error, SegVolError):
        return str(error)
    from . import runtime

    if isinstance(error, MemoryError) or (isinstance(error, RuntimeError) and runtime.is_out_of_memory(error)):
        return "out of memory: use a machine with more memory or a smaller volume"
    first_line = (str(error).strip().splitlines() or [""])[0][:300]
    return f"{type(error).__name__}: {first_line}".rstrip(": ")


# --- jobs: the per-case functions ---


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
        notices = _CaseNotices(reporter)
        try:
            warnings, status, error = self.run(host, case, notices), "ok", ""
        except (Cancelled, KeyboardInterrupt):
            raise
        except Exception as failure:  # noqa: BLE001 - every failure of one case is recorded, the others go on
            warnings, status, error = [], "failed", _failure_message(failure)
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


class _CaseNotices(Reporter):
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


@dataclass(frozen=True)
class SegmentJob(Job):
    """`segvol batch`: each text is one named segment of OUT/<id>.seg.nrrd."""

    texts: tuple[str, ...] = ()

    def output_of(self, case: Case) -> Path:
        return Path(self.output_dir) / f"{case.id}.seg.nrrd"

    def run(self, host: EngineHost, case: Case, reporter: Reporter) -> list[str]:
        from .prompts import plan_targets

        volume = read_ct(case.image)
        targets = plan_targets(list(self.texts), None, None, unnamed="SegVol 1")
        results = host.segment(
            VolumeInput(case.id, volume.array, volume.ijk_to_ras), targets, zoom_in=self.zoom_in, reporter=reporter
        )
        warnings = [w for result in results for w in result.warnings]
        return warnings + write_segmentation_results(self.output_of(case), results, volume)


# --- running: here or on Ray ---


class _CaseBar:
    """The case count and ETA on stderr (tqdm), a line per failed case."""

    def __init__(self, total: int, done: int):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=done, desc="cases", unit="case", file=sys.stderr, dynamic_ncols=True)

    def update(self, row: dict) -> None:
        if row["status"] != "ok":
            self.bar.write(f"segvol: {row['id']} failed: {row['error']}", file=sys.stderr)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


@dataclass
class RunSummary:
    done_before: int = 0  # cases skipped: done by an earlier run
    ok: int = 0
    failed: list[str] = field(default_factory=list)  # ids
    statuses: dict[str, str] = field(default_factory=dict)  # id -> ok/failed of every case recorded


def run_cases(
    job: Job, cases: Sequence[Case], ray_address: str | None = None, workers: int | None = None
) -> RunSummary:
    """Every case not done yet, here or on Ray; results.csv in job.output_dir is rewritten as rows complete."""
    output_dir = Path(job.output_dir)
    results_path = output_dir / RESULTS_NAME
    rows = read_results(results_path)
    by_id = {case.id: case for case in cases}
    todo = [case for case in cases if not job.is_done(case, rows.get(case.id))]
    summary = RunSummary(done_before=len(cases) - len(todo))
    if summary.done_before:
        print(
            f"segvol: {summary.done_before} of {len(cases)} case(s) already done in {output_dir}: skipped",
            file=sys.stderr,
        )
    bars: list[_CaseBar] = []

    def ready() -> None:  # the model is loaded (or the cluster started): the bar and its clock start
        bars.append(_CaseBar(len(cases), summary.done_before))

    def record(row: dict) -> None:
        rows[row["id"]] = row
        write_results(results_path, _in_order(rows, by_id))
        if row["status"] == "ok":
            summary.ok += 1
        else:
            summary.failed.append(row["id"])
        bars[0].update(row)

    try:
        if todo and ray_address is None:
            _run_here(job, todo, ready, record)
        elif todo:
            _run_on_ray(job, todo, ready, record, ray_address, workers)
    finally:
        for bar in bars:
            bar.close()
    summary.statuses = {case_id: row.get("status", "") for case_id, row in rows.items()}
    return summary


def _in_order(rows: dict[str, dict], by_id: dict[str, Case]) -> list[dict]:
    """This run's cases in input order, then rows of other cases an earlier run recorded."""
    ordered = [rows[case_id] for case_id in by_id if case_id in rows]
    return ordered + [row for case_id, row in rows.items() if case_id not in by_id]


def _run_here(job: Job, todo: Sequence[Case], ready: Callable[[], None], record: Callable[[dict], None]) -> None:
    host = job.make_host()
    host.model()  # a bad checkpoint stops the run before the first case, not as a failure of every case
    ready()
    for case in todo:
        record(job.run_case(host, case))


class _RayCaseWorker:
    """A Ray Data actor: one engine host (one model) for every batch of case rows it is given."""

    def __init__(self, job: Job):
        self.job = job
        self.host = job.make_host()
        self.host.model()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = [
            self.job.run_case(self.host, Case(str(case_id), str(image), str(label) or None))
            for case_id, image, label in zip(batch["id"], batch["image"], batch["label"])
        ]
        return {name: [row.get(name, "") for row in rows] for name in rows[0]}


def _run_on_ray(
    job: Job,
    todo: Sequence[Case],
    ready: Callable[[], None],
    record: Callable[[dict], None],
    address: str,
    workers: int | None,
) -> None:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
        import ray.data
    except ImportError:
        raise InputError("--ray needs Ray: pip install 'SegVolSlicer[ray]' (or pip install 'ray[data]')") from None
    if job.choice.weights is not None or address == "local":
        from .weights import resolve_weights

        # Here, once: a bad checkpoint is one clear error (not an actor failing to start), and the actors of a
        # local cluster do not race to download the same weights.
        resolve_weights(job.choice.weights, job.choice.cache_dir)
    started_here = not ray.is_initialized()
    if started_here:
        try:
            if address == "local":
                # A private cluster on this machine, on loopback, without dashboard.
                ray.init(
                    num_cpus=max(workers or 1, os.cpu_count() or 1),
                    include_dashboard=False,
                    _node_ip_address="127.0.0.1",
                    logging_level="warning",
                    log_to_driver=True,
                )
            else:
                ray.init(address=address, logging_level="warning")
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise InputError(
                f"cannot reach the Ray cluster at {address}: {_failure_message(error)} (start it with "
                "'ray start --head' and give its address, or use --ray local)"
            ) from None
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        size = workers or max(gpus, 1)
        # Torch in an actor uses as many threads as the CPUs it holds: on our own cluster the workers share
        # this machine's CPUs; on a shared cluster each takes one (the nodes' sizes are not known here).
        cpus = max(1, int(resources.get("CPU", 1)) // size) if address == "local" else 1
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the driver's bar counts cases
        items = [{"id": case.id, "image": case.image, "label": case.label or ""} for case in todo]
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            _RayCaseWorker,
            fn_constructor_args=(job,),
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=size),
            num_cpus=cpus,
            num_gpus=1 if gpus else 0,
        )
        ready()
        try:
            for row in dataset.iter_rows():
                record({name: str(value) for name, value in row.items()})
        except ray.exceptions.RayError as error:
            raise SegVolError(f"the Ray run stopped: {_ray_cause(error)}") from None
    finally:
        if started_here:
            ray.shutdown()


def _ray_cause(error: BaseException) -> str:
    """The user-facing cause of a Ray failure (e.g. a checkpoint error raised in a worker actor)."""
    cause = getattr(error, "cause", None) or error.__cause__
    while cause is not None and not isinstance(cause, SegVolError):
        cause = getattr(cause, "cause", None) or cause.__cause__
    if cause is not None:
        return str(cause)
    return (str(error).strip().splitlines() or [type(error).__name__])[-1][:300]
