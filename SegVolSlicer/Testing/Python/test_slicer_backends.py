"""The worker-thread backend: progress and notices reach the GUI thread, errors and cancellation come back,
and a GPU out of memory falls back to the CPU with a message."""

import threading

import pytest
import torch

from SegVolSlicerLib import backends
from SegVolSlicerLib.errors import Cancelled


def test_job_reports_progress_and_result():
    release = threading.Event()

    def work(reporter):
        reporter.progress("zoom-in", 1, 3)
        reporter.notice("hello")
        release.wait(5)
        return threading.current_thread().name

    job = backends.WorkerJob(work).start()
    assert not job.finished
    release.set()
    assert job.wait(5)
    assert job.outcome() == "SegVol inference"  # ran off the calling thread
    assert job.reporter.drain() == [backends.ProgressEvent("zoom-in", 1, 3), backends.Notice("hello")]
    assert job.reporter.drain() == []


def test_job_hands_back_errors_and_cancellation():
    started = threading.Event()

    def work(reporter):
        started.set()
        reporter.cancel.wait(5)
        raise Cancelled("segmentation cancelled")

    job = backends.WorkerJob(work).start()
    started.wait(5)
    job.cancel()
    assert job.wait(5)
    with pytest.raises(Cancelled):
        job.outcome()


def test_out_of_memory_falls_back_to_cpu():
    calls, notices = [], []

    def run(device):
        calls.append(device)
        if device != "cpu":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return "mask"

    assert backends.run_with_cpu_fallback(run, "cuda:0", notices.append) == "mask"
    assert calls == ["cuda:0", "cpu"] and "CPU" in notices[0]


@pytest.mark.parametrize("error", [RuntimeError("MPS backend out of memory (MPS allocated: 8 GB)"),
                                   torch.OutOfMemoryError("CUDA out of memory")])
def test_out_of_memory_is_recognised(error):
    assert backends.is_out_of_memory(error)


def test_other_errors_and_cpu_failures_propagate():
    def broken(device):
        raise ValueError("not memory")

    with pytest.raises(ValueError):
        backends.run_with_cpu_fallback(broken, "cuda", lambda message: None)

    def cpu_oom(device):
        raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate; out of memory")

    with pytest.raises(RuntimeError):
        backends.run_with_cpu_fallback(cpu_oom, "cpu", lambda message: pytest.fail("no fallback from the CPU"))
    assert not backends.is_out_of_memory(ValueError("out of memory"))
