"""The Slicer panel's worker thread: the engine runs beside Slicer's GUI thread, reporting progress and
notices through a queue that the GUI thread drains.

The worker never touches Qt or MRML, so dialogs and scene edits stay on the main thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..reporting import ProgressEvent, Reporter


@dataclass(frozen=True)
class Notice:
    message: str  # something the user should read, e.g. the CPU fallback


class QueueReporter(Reporter):
    """Progress and notices queued for the GUI thread, which reads them with `drain()`."""

    def __init__(self):
        super().__init__()
        self._events: queue.SimpleQueue = queue.SimpleQueue()

    def progress(self, stage: str, done: int, total: int) -> None:
        self._events.put(ProgressEvent(stage, int(done), int(total)))

    def notice(self, message: str) -> None:
        self._events.put(Notice(message))

    def drain(self) -> list[ProgressEvent | Notice]:
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events


class WorkerJob:
    """Runs `work(reporter)` once on a daemon thread; the GUI thread polls `reporter.drain()` and `finished`,
    then reads `result` or `error` (the exception, re-raised by `outcome()`)."""

    def __init__(self, work: Callable[[QueueReporter], object], name: str = "SegVol inference"):
        self.name = name
        self.reporter = QueueReporter()
        self.result = None
        self.error: BaseException | None = None
        self._work = work
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> WorkerJob:
        self._thread.start()
        return self

    def cancel(self) -> None:
        self.reporter.cancel.set()

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def outcome(self):
        if self.error is not None:
            raise self.error
        return self.result

    def _run(self) -> None:
        try:
            self.result = self._work(self.reporter)
        except BaseException as error:  # handed to the GUI thread, which decides how to show it
            self.error = error
        finally:
            self._done.set()
