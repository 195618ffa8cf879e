"""Ten names as one job: a whole `segvol segment` process against a whole process of the official strategy.

    python benchmarks/process_benchmark.py [--checkpoint SegVol_v1.pth] [--device auto] [--names 10]
                                           [--no-zoom-in] [--short] [--json FILE]

Both sides are fresh Python processes, timed from start to exit, on the same CT file (the test suite's
synthetic CT as .nii.gz) and weights:
  ours     - `python -m SegVolSlicerLib.cli segment CT -o OUT.seg.nrrd --text NAME ...` (one target per name,
             defaults: embedding caches, bf16 encoder where native, SDPA);
  official - this script as a child: the model built the official way (randomly initialised, then the
             checkpoint copied in), the CT read, every name through the official execution strategy
             (run_benchmarks.strategy: fp32, explicit attention, nothing cached), a .seg.nrrd written.
Then the fixed costs apart, each in its own fresh process: `import torch`, importing the model code (torch,
transformers, MONAI), and loading the weights both ways (official build + copy, ours: meta-device build,
tensors assigned). --short: 3 names, zoom-out only (a quick check).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAMES = ["liver", "spleen", "left kidney", "right kidney", "aorta", "pancreas", "stomach", "gall bladder"]
NAMES += ["postcava", "esophagus", "duodenum", "bladder"]


def _environment() -> dict:
    package = HERE.parent / "SegVolSlicer"
    path = os.pathsep.join(p for p in (str(package), str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def wall(command: list[str]) -> tuple[float, str]:
    """Seconds from process start to exit, and its stdout (a failing process stops the benchmark)."""
    start = time.perf_counter()
    done = subprocess.run(command, env=_environment(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command[:4])} ... failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def official_child(ct: str, checkpoint: str, device: str, zoom_in: bool, output: str, names: list[str]) -> None:
    """The official strategy as a whole process (imports inside: they are part of what is timed)."""
    from run_benchmarks import strategy

    from SegVolSlicerLib.imageio import Segment, read_volume, write_segmentation
    from SegVolSlicerLib.inference.session import SegVolSession
    from SegVolSlicerLib.model import build_segvol
    from SegVolSlicerLib.model.checkpoint import find_weights, load_state_strict, read_state_dict
    from SegVolSlicerLib.prompts import Target
    from SegVolSlicerLib.runtime import resolve_device
    from SegVolSlicerLib.vocabulary import colour_for

    weights, tokenizer = find_weights(Path(checkpoint))
    model = build_segvol(tokenizer)  # the official build: every parameter initialised, then overwritten
    load_state_strict(model, read_state_dict(weights), weights)
    model = model.to(resolve_device(device))
    volume = read_volume(ct)
    with strategy(model, official=True, precision="fp32"):
        session = SegVolSession(model, volume.array, volume.ijk_to_ras, cache_budget_mb=0, window_batch_size=1)
        results = session.segment_many([Target(name, text=name) for name in names], zoom_in=zoom_in)
    segments = [Segment(r.name, r.mask, colour_for(r.name)) for r in results]
    write_segmentation(Path(output), segments, volume.reference)


def load_child(checkpoint: str, how: str) -> None:
    """Prints the seconds of reading + building + loading the weights, after the imports."""
    from SegVolSlicerLib.model import build_segvol, load_segvol
    from SegVolSlicerLib.model.checkpoint import find_weights, load_state_strict, read_state_dict

    start = time.perf_counter()
    if how == "official":
        weights, tokenizer = find_weights(Path(checkpoint))
        load_state_strict(build_segvol(tokenizer), read_state_dict(weights), weights)
    else:
        load_segvol(checkpoint, device="cpu")
    print(f"{time.perf_counter() - start:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="real weights (default: synthetic weights)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--names", type=int, default=10)
    parser.add_argument("--no-zoom-in", action="store_true")
    parser.add_argument("--short", action="store_true", help="3 names, zoom-out only")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--official-child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--load-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.official_child:
        ct, checkpoint, device, zoom_in, output, *names = args.official_child
        return official_child(ct, checkpoint, device, zoom_in == "zoom-in", output, names)
    if args.load_child:
        return load_child(*args.load_child)
    if args.short:
        args.names, args.no_zoom_in = min(args.names, 3), True

    from SegVolSlicerLib.testing.synthetic_ct import make_synthetic_ct, write_ct
    from SegVolSlicerLib.testing.synthetic_weights import save_checkpoint, synthetic_state_dict

    names = (NAMES * 2)[: args.names]
    python = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = args.checkpoint or str(save_checkpoint(synthetic_state_dict(), tmp / "SegVol_v1.pth", "pth"))
        ct = tmp / "ct.nii.gz"
        write_ct(make_synthetic_ct(), ct)
        zoom = [] if not args.no_zoom_in else ["--no-zoom-in"]
        ours_command = [python, "-m", "SegVolSlicerLib.cli", "segment", str(ct), "--checkpoint", checkpoint]
        ours_command += ["--device", args.device, *zoom, "-o", str(tmp / "ours.seg.nrrd")]
        official_command = [python, str(Path(__file__).resolve()), "--official-child", str(ct), checkpoint]
        official_command += [args.device, "zoom-out" if args.no_zoom_in else "zoom-in", str(tmp / "off.seg.nrrd")]

        rows = []
        for count in sorted({1, len(names)}):
            texts = [part for name in names[:count] for part in ("--text", name)]
            print(f"{count} name(s): ours ...", flush=True)
            ours, _ = wall(ours_command + texts)
            print(f"{count} name(s): official ...", flush=True)
            official, _ = wall(official_command + names[:count])
            rows.append((count, official, ours))

        fixed = {
            "python + import torch": wall([python, "-c", "import torch"])[0],
            "python + import the model code (torch, transformers, MONAI)": wall(
                [python, "-c", "import SegVolSlicerLib.model.segvol"]
            )[0],
        }
        script = str(Path(__file__).resolve())
        for how in ("official", "ours"):
            _, printed = wall([python, script, "--load-child", checkpoint, how])
            fixed[f"weights: read + build + load ({how})"] = float(printed)

    mode = "zoom-out only" if args.no_zoom_in else "zoom-out + zoom-in"
    print(f"\nwhole processes, {mode}, device {args.device}, load average {os.getloadavg()[0]:.1f}:")
    print(f"{'names':>6} {'official s':>11} {'ours s':>9} {'speed-up':>9}")
    for count, official, ours in rows:
        print(f"{count:6d} {official:11.1f} {ours:9.1f} {official / ours:8.1f}x")
    if len(rows) == 2:
        (_, official_one, ours_one), (count, official_all, ours_all) = rows
        per_official = (official_all - official_one) / (count - 1)
        per_ours = (ours_all - ours_one) / (count - 1)
        print(f"per further name: official {per_official:.2f} s, ours {per_ours:.2f} s")
        print(
            f"fixed cost (one-name run minus one name): official {official_one - per_official:.1f} s, "
            f"ours {ours_one - per_ours:.1f} s"
        )
    print("\nfixed costs, each in a fresh process:")
    for what, seconds in fixed.items():
        print(f"  {what}: {seconds:.2f} s")
    if args.json:
        runs = [{"names": count, "official_s": official, "ours_s": ours} for count, official, ours in rows]
        Path(args.json).write_text(json.dumps({"zoom_in": not args.no_zoom_in, "runs": runs, "fixed": fixed}, indent=2))


if __name__ == "__main__":
    main()
