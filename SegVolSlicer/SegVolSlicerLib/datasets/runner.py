"""Running a job over cases, here or on a Ray cluster.

`run_cases` finds which cases are done for this job (see `records`), refuses a folder holding cases of another
job unless asked to redo them, runs the others (in this process with one model, or in Ray Data actors with one
model each; rows carry file paths, never voxels) and rebuilds results.csv from the records after every case.
Progress goes to the Reporter: `progress("case", done, total)` once the model is loaded and after each case,
a notice per failed case.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import InputError, SegVolError
from ..reporting import NO_REPORT, Reporter
from .cases import Case
from .jobs import Job, failure_message
from .records import RESULT_FIELDS, CheckpointHashes, Records, refuse_other_job


@dataclass
class RunSummary:
    done_before: int = 0  # cases skipped: done by an earlier run of the same job
    ok: int = 0
    failed: list[str] = field(default_factory=list)  # ids
    statuses: dict[str, str] = field(default_factory=dict)  # id -> ok/failed of every case recorded


def with_checkpoint_id(job: Job, records: Records) -> Job:
    """The job with its weights' identity (sha256 of the weights file, cached by path, size and time); the
    weights are resolved (downloaded if need be) here, once, not by each worker."""
    from ..weights import find_weights, resolve_weights

    weights_file, _ = find_weights(resolve_weights(job.choice.weights, job.choice.cache_dir))
    digest = CheckpointHashes(records.state / "checkpoints.json").of(weights_file)
    return replace(job, checkpoint_id=f"sha256:{digest}")


def run_cases(
    job: Job,
    cases: Sequence[Case],
    ray_address: str | None = None,
    workers: int | None = None,
    redo: bool = False,
    reporter: Reporter = NO_REPORT,
) -> RunSummary:
    """Every case not done by this job yet, here or on Ray; results.csv in job.output_dir rebuilt as they
    complete. Cases done by another job: refused, or with `redo` computed again."""
    output_dir = Path(job.output_dir)
    records = Records(output_dir)
    if not job.checkpoint_id:
        job = with_checkpoint_id(job, records)
    fingerprint = job.fingerprint()
    outcomes = {case.id: records.outcome(case.id, fingerprint) for case in cases}
    other = [case_id for case_id, outcome in outcomes.items() if outcome.other_job]
    if other and not redo:
        first = records.read(other[0]) or {}
        raise refuse_other_job(
            output_dir, other, records.job_description(first.get("fingerprint", "")), job.description()
        )
    records.describe_job(fingerprint, job.description())
    for case_id, outcome in outcomes.items():
        if outcome.why:
            reporter.notice(f"{case_id}: {outcome.why}: computed again")
    todo = [case for case in cases if not outcomes[case.id].done]
    summary = RunSummary(done_before=len(cases) - len(todo))
    order = [case.id for case in cases]
    records.write_results(order)
    if summary.done_before:
        reporter.notice(f"{summary.done_before} of {len(cases)} case(s) already done in {output_dir}: skipped")

    def ready() -> None:  # the model is loaded (or the cluster started): the case count starts
        reporter.progress("case", summary.done_before, len(cases))

    def record(row: dict) -> None:
        records.write_results(order)
        if row["status"] == "ok":
            summary.ok += 1
        else:
            summary.failed.append(row["id"])
            reporter.notice(f"{row['id']} failed: {row['error']}")
        reporter.progress("case", summary.done_before + summary.ok + len(summary.failed), len(cases))

    if todo and ray_address is None:
        run_here(job, todo, ready, record)
    elif todo:
        run_on_ray(job, todo, ready, record, ray_address, workers, reporter)
    summary.statuses = {case_id: row.get("status", "") for case_id, row in records.all().items()}
    return summary


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
        # The record is committed here, in the actor, as the case completes: the driver may die before it
        # sees the row, the case stays done.
        rows = [
            self.job.run_case(self.host, Case(str(case_id), str(image), str(label) or None, str(series) or None))
            for case_id, image, label, series in zip(batch["id"], batch["image"], batch["label"], batch["series"])
        ]
        return {name: [row.get(name, "") for row in rows] for name in RESULT_FIELDS}


def run_on_ray(
    job: Job,
    todo: Sequence[Case],
    ready: Callable[[], None],
    record: Callable[[dict], None],
    address: str,
    workers: int | None,
    reporter: Reporter,
) -> None:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
        import ray.data
    except ImportError:
        raise InputError("--ray needs Ray: pip install 'SegVolSlicer[ray]' (or pip install 'ray[data]')") from None
    state = Records(job.output_dir).state
    if address == "local":
        clear_left_ray(state, reporter)
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
                remember_ray(state)
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
        # A lost worker (killed, out of memory, its node gone) is restarted and its case retried; a case that
        # loses its worker every time fails alone, the run goes on.
        context.max_errored_blocks = len(todo)
        items = [
            {"id": case.id, "image": case.image, "label": case.label or "", "series": case.series or ""}
            for case in todo
        ]
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            RayCaseWorker,
            fn_constructor_args=(job,),
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=size),
            num_cpus=cpus,
            num_gpus=1 if gpus else 0,
            max_task_retries=LOST_WORKER_RETRIES,  # a Ray remote argument (Ray 2.60 has no named one for it)
        )
        ready()
        seen = set()
        try:
            for row in dataset.iter_rows():
                seen.add(str(row["id"]))
                record({name: str(value) for name, value in row.items()})
        except ray.exceptions.RayError as error:
            raise SegVolError(f"the Ray run stopped: {ray_cause(error)}") from None
        for case in todo:
            if case.id not in seen:
                record(lost_case(job, case))
    finally:
        if started_here:
            ray.shutdown()
            (state / RAY_PROCESSES).unlink(missing_ok=True)


RAY_PROCESSES = "ray-local.json"
LOST_WORKER_RETRIES = 2


def lost_case(job: Job, case: Case) -> dict:
    """The record of a case whose row never came back: committed by its actor before the row was lost, or a
    failure (its worker was lost on every try)."""
    records = Records(job.output_dir)
    existing = records.read(case.id)
    if existing is not None and existing.get("status") == "ok" and existing.get("fingerprint") == job.fingerprint():
        return existing
    error = f"its Ray worker was lost {1 + LOST_WORKER_RETRIES} times (out of memory, or its node left the cluster)"
    return records.commit(
        {
            "id": case.id,
            "image": case.image,
            "status": "failed",
            "seconds": "",
            "warnings": "",
            "error": error,
            "fingerprint": job.fingerprint(),
        }
    )


def remember_ray(state: Path) -> None:
    """The processes of the local cluster just started (Ray's, below this one), so that a run after a SIGKILL
    of this one can stop any that outlived it. Ray ties them to this process on Linux; elsewhere they may
    survive it."""
    import psutil  # shipped with Ray

    processes = psutil.Process().children(recursive=True)
    content = {str(p.pid): p.create_time() for p in processes}
    state.mkdir(parents=True, exist_ok=True)
    (state / RAY_PROCESSES).write_text(json.dumps(content), encoding="utf-8")


def clear_left_ray(state: Path, reporter: Reporter) -> None:
    """Stops the processes of a local cluster that a killed run of this folder left (same pid and start time)."""
    import psutil

    path = state / RAY_PROCESSES
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    stopped = 0
    for pid, started in known.items():
        try:
            process = psutil.Process(int(pid))
            if abs(process.create_time() - started) < 1e-3:
                process.kill()
                stopped += 1
        except (psutil.Error, ValueError):
            continue
    path.unlink(missing_ok=True)
    if stopped:
        reporter.notice(f"stopped {stopped} Ray process(es) left by a killed run in this folder")


def ray_cause(error: BaseException) -> str:
    """The user-facing cause of a Ray failure (e.g. a checkpoint error raised in a worker actor)."""
    cause = getattr(error, "cause", None) or error.__cause__
    while cause is not None and not isinstance(cause, SegVolError):
        cause = getattr(cause, "cause", None) or cause.__cause__
    if cause is not None:
        return str(cause)
    return (str(error).strip().splitlines() or [type(error).__name__])[-1][:300]
