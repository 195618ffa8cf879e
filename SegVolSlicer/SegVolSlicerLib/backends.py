"""Where inference runs: a worker thread beside Slicer's GUI thread, with progress, cancellation and a CPU
fallback when a GPU runs out of memory.

The worker never touches Qt or MRML: it reports through a queue that the GUI thread drains (a QTimer in the
module widget), so dialogs and scene edits stay on the main thread. torch releases the GIL inside its kernels,
so Slicer stays responsive while the model runs.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressEvent:
    stage: str   # "download", "load", "preprocess", "zoom-out", "zoom-in", or "target" (done: its index)
    done: int
    total: int


@dataclass(frozen=True)
class Notice:
    message: str  # something the user should read, e.g. the CPU fallback


class Reporter:
    """What a job gets to talk to the GUI thread: `progress(stage, done, total)`, `notice(text)`, `cancel`."""

    def __init__(self):
        self.cancel = threading.Event()
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

    def __init__(self, work: Callable[[Reporter], object]):
        self.reporter = Reporter()
        self.result = None
        self.error: BaseException | None = None
        self._work = work
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="SegVol inference", daemon=True)

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


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA raises torch.OutOfMemoryError; MPS and older torch raise RuntimeError("... out of memory ...")."""
    return type(error).__name__ == "OutOfMemoryError" or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower())


def run_with_cpu_fallback(run: Callable[[str], object], device: str, on_fallback: Callable[[str], None]):
    """`run(device)`; if the GPU runs out of memory, `on_fallback(message)` (which tells the user and moves the
    model off the GPU), free the GPU's cache, and `run("cpu")` instead."""
    try:
        return run(device)
    except Exception as error:
        if device == "cpu" or not is_out_of_memory(error):
            raise
    on_fallback(f"Not enough GPU memory on '{device}': running on the CPU instead (slower). "
                "Choose device 'cpu' to skip the GPU next time, or free GPU memory.")
    _release_gpu_memory()
    return run("cpu")


def _release_gpu_memory() -> None:
    import torch  # lazily: the module must import before Slicer's dependency check has installed torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if torch.backends.mps.is_available():
        torch.mps.empty_cache()
