"""SegVolSlicer against the official execution strategy, in one run, on the same weights and volumes.

    python benchmarks/run_benchmarks.py [--checkpoint SegVol_v1.pth] [--device auto] [--categories 10]
                                        [--volumes 5] [--precision auto] [--window-batch auto] [--short]

Baseline = what the official code does per prompt: fp32, MONAI's explicit attention, one window at a time,
every window and the zoom-out image re-encoded for every prompt and category, the text re-encoded on every
forward (same pipeline code as ours, with caching, batching, SDPA and autocast turned off). Ours = the
default session. Timings are wall-clock seconds; the ratio is what to read (absolute CPU times on a shared
machine are noisy). Peak memory: GPU max allocated on CUDA, else the peak process RSS during the scenario.
Without --checkpoint, deterministic synthetic weights are used: speed does not depend on the values.
Each strategy also times one encoder and one decoder pass and prints it as a multiple of the machine's floor
(floor.py: the matmul throughput measured in the same run), the windows each scenario encoded against those
its prompts used, and the second click's time beyond its decoder passes. --short: 2 categories, no CLI
volumes, zoom-out only (a check that it runs; its figures are not the scenarios').
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from floor import Floor, pass_flops, pass_lines

from SegVolSlicerLib.imageio import Segment, read_volume, write_segmentation
from SegVolSlicerLib.inference.session import SegVolSession
from SegVolSlicerLib.model import load_segvol
from SegVolSlicerLib.prompts import Points, Target
from SegVolSlicerLib.testing.synthetic_ct import make_synthetic_ct, write_ct
from SegVolSlicerLib.testing.synthetic_weights import save_checkpoint, synthetic_state_dict
from SegVolSlicerLib.vocabulary import colour_for

CATEGORIES = [
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
    "duodenum",
    "bladder",
]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakMemory:
    """Peak GPU memory allocated (CUDA) or peak resident set size sampled every 20 ms (CPU)."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mb, self._stop = device, 0.0, threading.Event()

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, _rss_mb())
            time.sleep(0.02)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self.peak_mb, _rss_mb())


@contextmanager
def strategy(model, official: bool, precision: str):
    """Switch the shared model between the official execution strategy and ours."""
    model.image_encoder.set_sdpa(not official)
    model.set_precision("fp32" if official else precision)
    encode_text = model.text_encoder.forward
    if official:  # the official code tokenises and runs CLIP on every forward

        def uncached(names):
            model.text_encoder._cache.clear()
            return encode_text(names)

        model.text_encoder.forward = uncached
    try:
        yield
    finally:
        model.text_encoder.forward = encode_text


def new_session(model, volume, official: bool, window_batch: int) -> SegVolSession:
    if official:
        return SegVolSession(model, volume.array, volume.ijk_to_ras, cache_budget_mb=0, window_batch_size=1)
    return SegVolSession(model, volume.array, volume.ijk_to_ras, window_batch_size=window_batch)


class EncoderCalls:
    """Counts the windows the model encodes (zoom-out images included) while a scenario runs."""

    def __init__(self, model):
        self.model, self.windows = model, 0

    def __enter__(self):
        encode = self.model.encode_image

        def counted(image):
            self.windows += image.shape[0]
            return encode(image)

        self.model.encode_image = counted
        return self

    def __exit__(self, *exc):
        del self.model.encode_image  # back to the class's method


def timed(device: torch.device, run) -> tuple[float, float, object]:
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        result = run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return seconds, memory.peak_mb, result


def scenarios(
    model, volumes, official: bool, window_batch: int, categories: list[str], out_dir: Path, zoom_in: bool = True
):
    """{scenario: (seconds, peak MB)} for one strategy."""
    volume, device = volumes[0], model.device
    organ = np.argwhere(make_synthetic_ct().labels == 1)  # liver voxels (k, j, i)
    first_click = Points(organ[len(organ) // 2][::-1][None], [1])
    second_click = Points.concatenate(first_click, Points(organ[len(organ) // 3][::-1][None], [1]))
    results, notes = {}, {}

    session = None

    def first_prompt():
        nonlocal session
        session = new_session(model, volume, official, window_batch)
        return session.segment(Target("liver", points=first_click), zoom_in)

    def run(name, scenario):
        with EncoderCalls(model) as calls:
            seconds, peak, result = timed(device, scenario)
        results[name] = (seconds, peak)
        used = sum(1 + r.windows for r in (result if isinstance(result, list) else [result] if result else []))
        notes[name] = f"{calls.windows} windows encoded for {used} decoder passes" if used else ""
        return seconds, result

    run("first prompt on a new CT", first_prompt)

    def second():
        current = new_session(model, volume, official, window_batch) if official else session
        return current.segment(Target("liver", points=second_click), zoom_in)

    seconds, clicked = run("second click on the same CT", second)
    notes["second click decoder passes"] = 1 + clicked.windows

    def many_categories():
        current = new_session(model, volume, official, window_batch)
        return current.segment_many([Target(name, text=name) for name in categories], zoom_in)

    run(f"{len(categories)} categories by text", many_categories)

    def cli_batch():  # what `segvol segment CT --text liver --text spleen` does per volume, model loaded once
        for index, path in enumerate(volumes[1:]):
            loaded = read_volume(path)
            current = new_session(model, loaded, official, window_batch)
            masks = current.segment_many([Target(n, text=n) for n in ("liver", "spleen")], zoom_in)
            write_segmentation(
                out_dir / f"case{index}.seg.nrrd",
                [Segment(m.name, m.mask, colour_for(m.name)) for m in masks],
                loaded.reference,
            )

    if len(volumes) > 1:
        run(f"CLI over {len(volumes) - 1} volumes (2 organs each)", cli_batch)
    return results, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="real weights (default: synthetic weights)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", help="ours: auto, fp32, bf16 or fp16")
    parser.add_argument("--window-batch", default="auto", help="ours: windows per encoder call (auto: 4 on GPU)")
    parser.add_argument("--categories", type=int, default=10)
    parser.add_argument("--volumes", type=int, default=5)
    parser.add_argument(
        "--short", action="store_true", help="2 categories, no CLI volumes, zoom-out only (a quick check)"
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.short:
        args.categories, args.volumes = min(args.categories, 2), 0

    flops = pass_flops()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = args.checkpoint or save_checkpoint(synthetic_state_dict(), tmp / "SegVol_v1.pth", "pth")
        model = load_segvol(checkpoint, device=args.device)
        device = model.device
        window_batch = (4 if device.type == "cuda" else 1) if args.window_batch == "auto" else int(args.window_batch)
        precision = args.precision
        paths = []
        for seed in range(args.volumes + 1):
            write_ct(make_synthetic_ct(seed), tmp / f"ct{seed}.nii.gz")
            paths.append(tmp / f"ct{seed}.nii.gz")
        volumes = [read_volume(paths[0])] + paths[1:]
        categories = (CATEGORIES * 2)[: args.categories]

        table, floors = {}, {}
        for name, official in (("baseline", True), ("ours", False)):
            with strategy(model, official, precision):
                label = f"{name} ({model.precision}, window batch {1 if official else window_batch})"
                print(f"running {label} ...", flush=True)
                floors[name] = Floor.measure(device, short=args.short)
                passes, seconds = pass_lines(model, floors[name], flops, repeats=1 if args.short else 2)
                table[name + "_passes"] = passes
                table[name + "_pass_seconds"] = seconds
                table[name], table[name + "_notes"] = scenarios(
                    model, volumes, official, window_batch, categories, tmp, zoom_in=not args.short
                )
                table[name + "_label"] = label
                print("\n".join(floors[name].lines() + passes), flush=True)

    header = (
        f"{'scenario':44} {'baseline s':>11} {'ours s':>9} {'speed-up':>9} {'peak MB base':>13} {'peak MB ours':>13}"
    )
    threads = torch.get_num_threads()
    print(f"\ndevice: {device} ({threads} CPU threads); {table['baseline_label']} vs {table['ours_label']}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "")
    print(header)
    for scenario, (base_s, base_mb) in table["baseline"].items():
        ours_s, ours_mb = table["ours"][scenario]
        print(f"{scenario:44} {base_s:11.1f} {ours_s:9.2f} {base_s / ours_s:8.1f}x {base_mb:13.0f} {ours_mb:13.0f}")
    for name in ("baseline", "ours"):
        print(f"\n{table[name + '_label']}:")
        for line in floors[name].lines() + table[name + "_passes"]:
            print("  " + line)
        for scenario, note in table[name + "_notes"].items():
            if note and scenario in table[name]:
                print(f"  {scenario}: {note}")
    passes = table["ours_notes"]["second click decoder passes"]
    second = table["ours"]["second click on the same CT"][0]
    beyond = second - passes * table["ours_pass_seconds"]["decoder"]
    print(f"  second click: {passes} decoder passes + {beyond:.2f} s beyond them ({second:.2f} s in all)")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), **table}, indent=2, default=str))


if __name__ == "__main__":
    main()
