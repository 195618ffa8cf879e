"""The worker-thread backend: progress and notices reach the GUI thread, errors and cancellation come back."""

import threading

import pytest

from SegVolSlicerLib.errors import Cancelled
from SegVolSlicerLib.slicer import worker


def test_job_reports_progress_and_result():
    release = threading.Event()

    def work(reporter):
        reporter.progress("zoom-in", 1, 3)
        reporter.notice("hello")
        release.wait(5)
        return threading.current_thread().name

    job = worker.WorkerJob(work).start()
    assert not job.finished
    release.set()
    assert job.wait(5)
    assert job.outcome() == "SegVol inference"  # ran off the calling thread
    assert job.reporter.drain() == [worker.ProgressEvent("zoom-in", 1, 3), worker.Notice("hello")]
    assert job.reporter.drain() == []


def test_job_hands_back_errors_and_cancellation():
    started = threading.Event()

    def work(reporter):
        started.set()
        reporter.cancel.wait(5)
        raise Cancelled("segmentation cancelled")

    job = worker.WorkerJob(work).start()
    started.wait(5)
    job.cancel()
    assert job.wait(5)
    with pytest.raises(Cancelled):
        job.outcome()
