"""A job: one request's targets on one session, its progress and its result. Requests wait for a job's
progress on the event loop, never in a worker thread: any number of long polls leave the threads to the
other routes."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

from ..reporting import Reporter


class JobReporter(Reporter):
    """The engine's progress and notices, kept for the status endpoint; every change bumps `version` and
    wakes the requests waiting for one. The cancel endpoint sets `cancel`."""

    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()
        self.version, self.stage, self.done, self.total, self.notices = 0, None, 0, 0, []
        self.waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def progress(self, stage: str, done: int, total: int) -> None:
        with self.lock:
            self.stage, self.done, self.total = stage, done, total
            self.bump()

    def notice(self, message: str) -> None:
        with self.lock:
            self.notices.append(message)
            self.bump()

    def bump(self) -> None:
        """With `lock` held: a new version, and every waiting request woken on its own loop."""
        self.version += 1
        for loop, event in self.waiters:
            loop.call_soon_threadsafe(event.set)


@dataclass
class Job:
    id: str
    targets: list
    zoom_in: bool
    reporter: JobReporter = field(default_factory=JobReporter)
    state: str = "queued"  # queued, running, done, failed, cancelled
    error: str | None = None
    error_code: str | None = None
    results: list[dict] = field(default_factory=list)
    masks: bytes = b""

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    def finish(self, state: str, **values) -> None:
        with self.reporter.lock:
            self.state = state
            for name, value in values.items():
                setattr(self, name, value)
            self.reporter.bump()

    def status(self) -> dict:
        with self.reporter.lock:
            reporter = self.reporter
            return {
                "job_id": self.id,
                "state": self.state,
                "version": reporter.version,
                "stage": reporter.stage,
                "done": reporter.done,
                "total": reporter.total,
                "notices": list(reporter.notices),
                "error": self.error,
                "error_code": self.error_code,
                "results": self.results,
            }

    async def wait(self, since: int | None, timeout: float) -> None:
        """Until the job ends, its status changes past version `since` (None: only the end counts) or
        `timeout` seconds pass; on the event loop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            waiter = (loop, asyncio.Event())
            with self.reporter.lock:
                if self.finished or (since is not None and self.reporter.version > since):
                    return
                self.reporter.waiters.add(waiter)
            try:
                await asyncio.wait_for(waiter[1].wait(), deadline - loop.time())
            except asyncio.TimeoutError:  # the builtin TimeoutError from Python 3.11 on
                return
            finally:
                with self.reporter.lock:
                    self.reporter.waiters.discard(waiter)
