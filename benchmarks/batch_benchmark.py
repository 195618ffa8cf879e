"""`segvol batch` throughput: cases per hour without Ray and with `--ray local`, peak memory per worker, and
the cost of the per-case records.

    python benchmarks/batch_benchmark.py [--cases 6] [--texts 2] [--workers 2] [--checkpoint SegVol_v1.pth]
                                         [--device auto] [--shape 300 512 512] [--no-zoom-in]

Each mode runs the installed command in a subprocess on the same CTs (the synthetic CT of the test suite,
shifted per case so no two are equal; --shape K J I resamples it, e.g. 300 512 512 for a full-size CT) into
a fresh output folder. Reported: wall time, cases per hour over the whole run (model loading and Ray start
included) and in the steady state (from the per-case seconds in results.csv), and the peak resident memory of
every process of the run sampled every 50 ms (the batch process without Ray; each Ray worker actor with Ray).
Without --checkpoint, synthetic weights are used: speed does not depend on the values.
Records: what committing a case costs (checksums of its outputs, the record written atomically, the outputs
renamed), measured on the outputs of the run without Ray, against the median seconds of a case; and the wall
time of rerunning the same command, which checks every case's record and outputs and computes nothing.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from SegVolSlicerLib.datasets.records import Records
from SegVolSlicerLib.testing.synthetic_ct import SyntheticCT, make_synthetic_ct, write_ct
from SegVolSlicerLib.testing.synthetic_weights import save_checkpoint, synthetic_state_dict

TEXTS = [
    "liver",
    "spleen",
    "left kidney",
    "right kidney",
    "aorta",
    "pancreas",
    "stomach",
    "gall bladder",
    "postcava",
    "esophagus",
]
PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def _processes_under(root: int) -> dict[int, str]:
    """pid -> command line of `root` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as file:
                    parent = int(file.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    found, stack = {}, [root]
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as file:
                found[pid] = file.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        stack += children.get(pid, [])
    return found


class PeakMemory(threading.Thread):
    """Peak RSS (MB) of each process under `root`, keyed by a short name."""

    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root, self.peaks, self.stop = root, {}, threading.Event()

    def run(self):
        while not self.stop.is_set():
            for pid, command in _processes_under(self.root).items():
                try:
                    with open(f"/proc/{pid}/statm") as file:
                        rss = int(file.read().split()[1]) * PAGE_MB
                except (OSError, IndexError, ValueError):
                    continue
                name = (
                    "worker actor"
                    if "RayCaseWorker" in command
                    else "batch process"
                    if pid == self.root
                    else command.split(" ")[0].rsplit("/", 1)[-1][:40]
                )
                key = (name, pid)
                self.peaks[key] = max(self.peaks.get(key, 0.0), rss)
            time.sleep(0.05)


def make_cases(folder: Path, count: int, shape: tuple[int, int, int] | None) -> list[Path]:
    ct = make_synthetic_ct()
    if shape is not None:  # nearest resampling to the asked size, the geometry scaled to match
        index = [np.linspace(0, n - 1, m).round().astype(int) for n, m in zip(ct.volume.shape, shape)]
        grid = np.ix_(*index)
        scale = np.diag(
            [ct.volume.shape[2] / shape[2], ct.volume.shape[1] / shape[1], ct.volume.shape[0] / shape[0], 1.0]
        )
        ct = SyntheticCT(ct.volume[grid], ct.labels[grid], ct.ijk_to_ras @ scale)
    paths = []
    for n in range(count):
        path = folder / f"case{n:03d}.nii.gz"
        volume = np.roll(ct.volume, 3 * n, axis=2)
        write_ct(SyntheticCT(volume, ct.labels, ct.ijk_to_ras), path)
        paths.append(path)
    return paths


def run_mode(label: str, command: list[str], output: Path) -> dict:
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    memory = PeakMemory(process.pid)
    memory.start()
    _, err = process.communicate()
    wall = time.perf_counter() - start
    memory.stop.set()
    memory.join()
    if process.returncode != 0:
        sys.exit(f"{label} failed:\n{err[-3000:]}")
    with open(output / "results.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    seconds = [float(row["seconds"]) for row in rows if row["status"] == "ok"]
    workers = [mb for (name, _), mb in memory.peaks.items() if name in ("worker actor", "batch process")]
    actors = [mb for (name, _), mb in memory.peaks.items() if name == "worker actor"]
    return {
        "mode": label,
        "cases": len(seconds),
        "wall_s": wall,
        "per_hour": 3600 * len(seconds) / wall,
        "case_s": statistics.median(seconds),
        "worker_mb": max(actors or workers),
        "total_mb": sum(memory.peaks.values()),
    }


def records_overhead(output: Path) -> float:
    """Median seconds to commit one case as the runner does, on a copy of each case's outputs."""
    records = Records(output)
    seconds = []
    for record in records.all().values():
        staging = records.start(record["id"])
        for name in record["outputs"]:
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes((output / name).read_bytes())
        start = time.perf_counter()
        records.commit({key: value for key, value in record.items() if key != "outputs"})
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--texts", type=int, default=2, help="names per case (at most 10)")
    parser.add_argument(
        "--workers", type=int, nargs="*", default=[2], help="Ray worker counts to run (none: without Ray only)"
    )
    parser.add_argument("--checkpoint")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("K", "J", "I"))
    parser.add_argument("--no-zoom-in", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = args.checkpoint or save_checkpoint(synthetic_state_dict(), tmp / "SegVol_v1.pth", "pth")
        (tmp / "cases").mkdir()
        make_cases(tmp / "cases", args.cases, tuple(args.shape) if args.shape else None)
        base = [
            sys.executable,
            "-m",
            "SegVolSlicerLib.cli",
            "batch",
            str(tmp / "cases"),
            "--checkpoint",
            str(checkpoint),
            "--device",
            args.device,
            *[a for t in TEXTS[: args.texts] for a in ("--text", t)],
        ]
        base += ["--no-zoom-in"] if args.no_zoom_in else []
        modes = [("no Ray", [])] + [
            (f"--ray local --workers {n}", ["--ray", "local", "--workers", str(n)]) for n in args.workers
        ]
        results = []
        for number, (label, extra) in enumerate(modes):
            output = tmp / f"out{number}"
            results.append(run_mode(label, base + ["--output-dir", str(output)] + extra, output))
            print(results[-1], flush=True)
        commit_s = records_overhead(tmp / "out0")
        start = time.perf_counter()
        subprocess.run(base + ["--output-dir", str(tmp / "out0")], check=True, capture_output=True)
        rerun_s = time.perf_counter() - start
    print(
        f"\n{args.cases} cases, {args.texts} name(s) each, zoom-in {'off' if args.no_zoom_in else 'on'}, "
        f"{os.cpu_count()} CPU(s)\n"
    )
    print("| mode | wall | cases/hour (whole run) | median s/case | peak RSS per worker | peak RSS all processes |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| {r['mode']} | {r['wall_s']:.0f} s | {r['per_hour']:.0f} | {r['case_s']:.1f} | "
            f"{r['worker_mb']:.0f} MB | {r['total_mb']:.0f} MB |"
        )
    case_s = results[0]["case_s"]
    print(
        f"\nrecords: {1000 * commit_s:.1f} ms to commit a case ({100 * commit_s / case_s:.2f} % of its "
        f"{case_s:.1f} s); rerun of the finished run (nothing computed): {rerun_s:.1f} s"
    )


if __name__ == "__main__":
    main()
