"""The panel's first-use install: SegVol's Python packages for a run or an export, asked for on the GUI thread
(dependencies.check), installed as a side job while Slicer stays usable, every outcome in the status line.

Only one install at a time: while one runs, Segment and Export DICOM SEG are disabled and a second request is
refused (no second prompt, no second pip run).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable

import slicer

from ..errors import SegVolError
from . import dependencies

INSTALL_JOB = "SegVol install"


class Installer:
    """`ensure(...)` calls `then()` once the packages are ready (at once when they are, after the install
    otherwise); `show_status(text)` and `show_error(error, interactive)` are the panel's status line."""

    def __init__(self, jobs, show_status: Callable, show_error: Callable, on_change: Callable):
        self.jobs = jobs
        self.show_status = show_status
        self.show_error = show_error
        self.on_change = on_change  # the panel updates its buttons (an install started or ended)

    @property
    def installing(self) -> bool:
        return self.jobs.side_job_named(INSTALL_JOB)

    def ensure(self, requirements_file, needs_torch: bool, interactive: bool, then: Callable) -> None:
        if self.installing:
            return
        try:
            plan = dependencies.check(requirements_file, interactive, needs_torch=needs_torch)
        except SegVolError as error:
            self.show_error(error, interactive)
            return
        if isinstance(plan, str):
            self.show_status(plan)
            return
        if plan is None:
            then()
            return
        self.show_status(plan.message(), busy=True)
        self.jobs.start_side_job(lambda reporter: plan.run(), INSTALL_JOB, lambda job: self._installed(job, then))
        self.on_change()
        self.jobs.serve()

    def _installed(self, job, then) -> None:
        self.on_change()
        try:
            restart = job.outcome()
        except SegVolError as error:
            self.show_error(error, True)
            return
        except Exception as error:  # a bug, not the network: full details in the log
            logging.error(traceback.format_exc())
            self.show_error(SegVolError(f"{dependencies.FAILED} ({error})"), True)
            return
        if restart is not None:
            slicer.util.infoDisplay(restart)
            self.show_status(restart)
            return
        then()
