"""Runs `segvol` with the stand-in model and SIGKILLs itself at a chosen moment, for the tests of what a kill of
the driver leaves: python kill_at.py WHAT:N ARGV...

    case:N      as the Nth case starts
    writing:N   halfway through writing the Nth output file (half of it written)
    record:N    the Nth case's outputs complete, before its record
    rename:N    the Nth record written, before its outputs are renamed onto their final names
    results:N   at the rewrite of results.csv after the Nth record (after the last case: N = cases)
"""

import os
import signal
import sys

import SimpleITK as sitk
from fake_segvol import FakeSegVol

from SegVolSlicerLib import cli
from SegVolSlicerLib.datasets import jobs, records
from SegVolSlicerLib.engine import EngineHost

what, _, count = sys.argv[1].partition(":")
calls = {"n": 0}


def kill_at_call(function, before=None, kill=True):
    """`function`, killing this process at its Nth call (after `before`); kill=False: only counting."""

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == int(count) and kill:
            if before is not None:
                before(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        return function(*args, **kwargs)

    return wrapped


def half_written(image, path, *args, **kwargs):
    real_write_image(image, path, *args, **kwargs)
    with open(path, "r+b") as file:
        file.truncate(os.path.getsize(path) // 2)


model = FakeSegVol()
EngineHost.model = lambda self, reporter=None: model
real_write_image = sitk.WriteImage
if what == "case":
    jobs.SegmentJob.run = kill_at_call(jobs.SegmentJob.run)
elif what == "writing":
    sitk.WriteImage = kill_at_call(real_write_image, before=half_written)
elif what == "record":
    records.Records.commit = kill_at_call(records.Records.commit)
elif what == "rename":
    records.Records.finish = kill_at_call(records.Records.finish)
elif what == "results":
    records.Records.commit = kill_at_call(records.Records.commit, kill=False)
    real_write_results = records.Records.write_results

    def write_results_or_die(self, order):
        if calls["n"] >= int(count):
            os.kill(os.getpid(), signal.SIGKILL)
        real_write_results(self, order)

    records.Records.write_results = write_results_or_die
else:
    sys.exit(f"unknown moment {what}")
sys.exit(cli.main(sys.argv[2:]))
