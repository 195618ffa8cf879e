"""The panel's jobs: one segmentation run at a time (and the rerun auto-update asks for meanwhile), side jobs
(install, connection test, DICOM SEG export), all served by ONE loop that handles Qt events while they run, and
abandoning them at once (Cancel, scene close, the main window closing, module cleanup).

Slicer's PythonQt keeps the GIL on the GUI thread while Qt runs (no PythonQt thread support): waiting on an
Event with a timeout is what lets the worker run; Qt events are still handled several times within 100 ms. A job
started while the loop runs (a click handled inside it) joins that loop: loops never nest, so a side job never
holds up the run's progress and results, nor the run a side job's.
"""

from __future__ import annotations

from collections.abc import Callable

import slicer

from . import worker

EVENT_WAIT_S = 0.05


class Jobs:
    """The run and the side jobs the GUI thread is waiting for.

    `on_progress(event)` shows the run's progress events and notices; `on_run_done(job, request, interactive)`
    takes a finished run (its `outcome()`); a side job's own `on_done(job)` takes a finished side job. Abandoned
    jobs are cancelled and their results dropped: no callback is called for them.
    """

    def __init__(self, on_progress: Callable, on_run_done: Callable):
        self.on_progress = on_progress
        self.on_run_done = on_run_done
        self.job: worker.WorkerJob | None = None  # the segmentation run
        self.request = None  # the run's request
        self.interactive = True  # the run was started by the user (errors in a dialog), not by auto-update
        self.rerun_pending = False  # auto-update asked for a run while one was going
        self.side_jobs: list[tuple[worker.WorkerJob, Callable]] = []
        self._serving = False

    @property
    def running(self) -> bool:
        return self.job is not None

    def side_job_named(self, name: str) -> bool:
        return any(job.name == name for job, _ in self.side_jobs)

    def start_run(self, work: Callable, request, interactive: bool) -> None:
        """Start `work(reporter)` on the worker thread; `serve()` waits for it."""
        self.job, self.request, self.interactive = worker.WorkerJob(work).start(), request, interactive

    def start_side_job(self, work: Callable, name: str, on_done: Callable) -> None:
        """Start `work(reporter)` beside the run; `on_done(job)` takes it once finished (on the GUI thread);
        `serve()` waits for it."""
        self.side_jobs.append((worker.WorkerJob(work, name=name).start(), on_done))

    def cancel_run(self) -> None:
        """End the run now; the worker stops at its next cancel check, its results are dropped."""
        if self.job is not None:
            self.job.cancel()
        self.job = self.request = None
        self.rerun_pending = False

    def abandon(self) -> None:
        """Cancel the run and every side job; the loop returns at once."""
        self.cancel_run()
        for job, _ in self.side_jobs:
            job.cancel()
        self.side_jobs = []

    def serve(self) -> None:
        """Handle Qt events until the run, any rerun it leads to and every side job are done (Cancel, the scene
        and the prompts stay live meanwhile). Called while the loop already runs, it returns at once: the
        running loop serves the new job too."""
        if self._serving:
            return
        self._serving = True
        try:
            while self.job is not None or self.side_jobs:
                waited = self.job if self.job is not None else self.side_jobs[0][0]
                if not waited.wait(EVENT_WAIT_S):
                    slicer.app.processEvents()
                self._finish_side_jobs()
                job = self.job
                if job is None:
                    continue
                for event in job.reporter.drain():
                    self.on_progress(event)
                if job.finished and job is self.job:  # not abandoned or replaced while events were handled
                    request, interactive = self.request, self.interactive
                    self.job = self.request = None
                    self.on_run_done(job, request, interactive)
        finally:
            self._serving = False

    def _finish_side_jobs(self) -> None:
        for entry in list(self.side_jobs):
            job, on_done = entry
            if job.finished and entry in self.side_jobs:
                self.side_jobs.remove(entry)
                on_done(job)
