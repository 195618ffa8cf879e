"""Progress and cancellation: the one object every face hands to the engine.

The engine calls `reporter.progress(stage, done, total)` as it goes, `reporter.notice(message)` for something
the user should read (the CPU fallback), and `reporter.check_cancelled()` between model passes, the points
where stopping is safe. The base class reports nothing and is never cancelled; faces subclass it (the CLI's
progress bars, the Slicer panel's queue, the server's job status).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from .errors import Cancelled

# Stages, in the order a run reports them: "download" and "load" (weights, once), "preprocess" (once per
# volume), then per target "target" (done = its index), "zoom-out", "zoom-in" (done / total windows).


@dataclass(frozen=True)
class ProgressEvent:
    stage: str
    done: int
    total: int


class Reporter:
    """Reports nothing; cancelled once `cancel` (a threading.Event) is set, from any thread."""

    def __init__(self, cancel: threading.Event | None = None):
        self.cancel = cancel if cancel is not None else threading.Event()

    def progress(self, stage: str, done: int, total: int) -> None:
        """Called by the engine; override to show it."""

    def notice(self, message: str) -> None:
        """Called by the engine; override to show it."""

    def check_cancelled(self) -> None:
        if self.cancel.is_set():
            raise Cancelled("segmentation cancelled")


NO_REPORT = Reporter()  # the default: silent, never cancelled
