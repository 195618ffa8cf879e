"""Stopping a process a test or benchmark started (a `segvol serve` box, nginx), by its handle: asked to stop,
then killed if it has not ended within the grace period, so nothing it started outlives the caller."""

from __future__ import annotations

import signal
import subprocess


def stop_process(process: subprocess.Popen, stop_signal: int = signal.SIGTERM, grace_s: float = 30) -> None:
    """Send `stop_signal` (SIGINT: `segvol serve`'s Ctrl-C shutdown), wait `grace_s`, then kill and reap."""
    if process.poll() is not None:
        return
    process.send_signal(stop_signal)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
