"""Slicer's GIL, emulated: PythonQt runs without thread support, so the GUI thread keeps the GIL while Qt
handles events (native code). A `ctypes.PyDLL` call keeps the GIL for its whole duration, like that.

Used by test_slicer_widget.py and benchmarks/run_loop_benchmark.py.
"""

import ctypes
import threading
import time

import torch

_LIBC = ctypes.PyDLL(None)  # PyDLL, not CDLL: the GIL is not released during the call


def hold_gil(seconds: float) -> None:
    """Sit in native code for `seconds` without releasing the GIL (Qt handling events inside Slicer)."""
    _LIBC.usleep(int(seconds * 1e6))


def torch_like_work(steps: int) -> float:
    """What the model thread does: short torch operations (which release the GIL) glued by Python code
    (which needs it). Returns its wall-clock duration in seconds."""
    start = time.perf_counter()
    x = torch.full((96, 96), 0.5)
    for _ in range(steps):
        x = torch.tanh(x @ x * 0.01)
    return time.perf_counter() - start


def free_running_seconds(steps: int) -> float:
    """The work on a thread while the main thread only waits for it (the GIL is free for the worker)."""
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(torch_like_work(steps)))
    worker.start()
    worker.join()
    return outcome[0]


def torch_like_work_for(seconds: float) -> int:
    """The same work for a fixed wall time; returns the steps done. A test that compares step counts over a
    fixed time fails a loop that starves the worker or never handles Qt events, however fast the machine."""
    x, steps, end = torch.full((96, 96), 0.5), 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        x = torch.tanh(x @ x * 0.01)
        steps += 1
    return steps


def free_running_steps(seconds: float) -> int:
    """`torch_like_work_for` on a thread while the main thread only waits for it."""
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(torch_like_work_for(seconds)))
    worker.start()
    worker.join()
    return outcome[0]
