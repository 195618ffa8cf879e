"""The panel's run loop inside Slicer, emulated: how fast does the model thread run while the GUI thread
holds the GIL in Qt's native code (PythonQt without thread support)?

    PYTHONPATH=SegVolSlicer:SegVolSlicer/Testing/Python python benchmarks/run_loop_benchmark.py [--steps 3000]

Worker: short torch operations glued by Python (Testing/Python/gil_emulation.torch_like_work). Three ways to
wait for it on the main thread:
- free-running: the main thread only joins the worker (the GIL is the worker's);
- the former QTimer poll: the main thread sits in Qt's event loop holding the GIL and polls every 100 ms;
- the panel's loop (SegVolSlicerLib.slicer.jobs.Jobs.serve, the real code): waits on the job's done-event for
  EVENT_WAIT_S, then handles Qt events, each round of events emulated as native code holding the GIL for
  1-20 ms (an idle event loop takes well under 1 ms, a slice-view render a few ms).
Reported: the worker's speed as a share of free-running, and the longest wait between Qt event rounds.
"""

from __future__ import annotations

import argparse
import time
import types

import gil_emulation
import slicer
import torch

from SegVolSlicerLib.slicer import jobs, worker


def timed_job(steps):
    durations = []
    return worker.WorkerJob(lambda reporter: durations.append(gil_emulation.torch_like_work(steps))), durations


def qtimer_poll(steps) -> tuple[float, float]:
    """The former loop: Qt's event loop (GIL held) between 100 ms timer polls."""
    job, durations = timed_job(steps)
    job.start()
    while not job.finished:
        gil_emulation.hold_gil(0.1)
        job.reporter.drain()
    return durations[0], 0.1


def panel_loop(steps, event_handling_s) -> tuple[float, float]:
    """The panel's loop (SegVolSlicerLib.slicer.jobs.Jobs.serve, the real code) serving one run."""
    event_times = []

    def handle_qt_events():
        event_times.append(time.perf_counter())
        gil_emulation.hold_gil(event_handling_s)

    slicer.app = types.SimpleNamespace(processEvents=handle_qt_events)
    loop = jobs.Jobs(on_progress=lambda event: None, on_run_done=lambda job, request, interactive: None)
    job, durations = timed_job(steps)
    loop.job = job.start()
    start = time.perf_counter()
    loop.serve()
    times = [start, *event_times, time.perf_counter()]
    return durations[0], max(b - a for a, b in zip(times, times[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000, help="torch operations of the worker")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs per row")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core for the worker: intra-op threads on a shared machine only add noise

    def speed(run, steps):
        """min free-running time / min time under `run`, alternating the two (the machine is shared)."""
        free, loop, gaps = [], [], []
        for _ in range(args.repeats):
            free.append(gil_emulation.free_running_seconds(steps))
            duration, gap = run(steps)
            loop.append(duration)
            gaps.append(gap)
        return min(free) / min(loop), min(free), min(gaps)

    print(f"{args.steps} torch steps, EVENT_WAIT_S = {jobs.EVENT_WAIT_S} s, best of {args.repeats}")
    print("| main thread | worker speed (of free-running) | free-running | longest gap between Qt event rounds |")
    print("| --- | ---: | ---: | ---: |")
    ratio, free, gap = speed(qtimer_poll, max(args.steps // 20, 1))  # 1/20 of the work: that loop is slow
    print(f"| former QTimer poll (100 ms) | {ratio:.0%} | {free:.2f} s | {gap * 1000:.0f} ms |")
    for event_ms in (1, 5, 10, 20):
        ratio, free, gap = speed(lambda steps, ms=event_ms: panel_loop(steps, ms / 1000), args.steps)
        print(f"| panel loop, Qt events {event_ms} ms each | {ratio:.0%} | {free:.2f} s | {gap * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
