"""Running a job over cases, here or on a Ray cluster.

`run_cases` skips the cases recorded `ok` whose outputs exist, runs the others (in this process with one model,
or in Ray Data actors with one model each; rows carry file paths, never voxels) and rewrites results.csv
atomically after every case, so that a run killed at any moment leaves complete files only.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, SegVolError
from ..imageio import atomic_output
from .cases import Case
from .jobs import Job, failure_message

RESULT_FIELDS = ("id", "image", "status", "seconds", "warnings", "error")
RESULTS_NAME = "results.csv"


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
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=RESULT_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_output(path) as tmp:
        tmp.write_text(table.getvalue(), encoding="utf-8")


class CaseBar:
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
    bars: list[CaseBar] = []

    def ready() -> None:  # the model is loaded (or the cluster started): the bar and its clock start
        bars.append(CaseBar(len(cases), summary.done_before))

    def record(row: dict) -> None:
        rows[row["id"]] = row
        write_results(results_path, in_order(rows, by_id))
        if row["status"] == "ok":
            summary.ok += 1
        else:
            summary.failed.append(row["id"])
        bars[0].update(row)

    try:
        if todo and ray_address is None:
            run_here(job, todo, ready, record)
        elif todo:
            run_on_ray(job, todo, ready, record, ray_address, workers)
    finally:
        for bar in bars:
            bar.close()
    summary.statuses = {case_id: row.get("status", "") for case_id, row in rows.items()}
    return summary


def in_order(rows: dict[str, dict], by_id: dict[str, Case]) -> list[dict]:
    """This run's cases in input order, then rows of other cases an earlier run recorded."""
    ordered = [rows[case_id] for case_id in by_id if case_id in rows]
    return ordered + [row for case_id, row in rows.items() if case_id not in by_id]


def run_here(job: Job, todo: Sequence[Case], ready: Callable[[], None], record: Callable[[dict], None]) -> None:
    host = job.make_host()
    host.model()  # a bad checkpoint stops the run before the first case, not as a failure of every case
    ready()
    for case in todo:
        record(job.run_case(host, case))


class RayCaseWorker:
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


def run_on_ray(
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
        from ..weights import resolve_weights

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
                f"cannot reach the Ray cluster at {address}: {failure_message(error)} (start it with "
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
            RayCaseWorker,
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
            raise SegVolError(f"the Ray run stopped: {ray_cause(error)}") from None
    finally:
        if started_here:
            ray.shutdown()


def ray_cause(error: BaseException) -> str:
    """The user-facing cause of a Ray failure (e.g. a checkpoint error raised in a worker actor)."""
    cause = getattr(error, "cause", None) or error.__cause__
    while cause is not None and not isinstance(cause, SegVolError):
        cause = getattr(cause, "cause", None) or cause.__cause__
    if cause is not None:
        return str(cause)
    return (str(error).strip().splitlines() or [type(error).__name__])[-1][:300]
