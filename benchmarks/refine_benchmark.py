"""A correction click: local correction (`session.refine`) against a click through the full pipeline.

    python benchmarks/refine_benchmark.py [--checkpoint SegVol_v1.pth] [--device auto] [--shape 300 512 512]
                                          [--clicks 3] [--small] [--precision fp32] [--json FILE]

On the synthetic CT nearest-resampled to --shape (default 512 x 512 x 300, a realistic CT size), one session:
the text prompt "liver" runs once (untimed: it encodes the zoom-out image and the windows), then each
correction click (a negative click, then a positive one, inside the organ) runs both ways, alternating, in
the same session and the same run:
  full   - session.segment(target with the click): the official pipeline (zoom-out decode, every zoom-in
           window decoded; windows the click moves the ROI onto are encoded);
  refine - session.refine(first, target with the click): the window the click falls in, decoded once.
--small: also the test suite's small synthetic CT, refine against the official code's click (run_benchmarks'
baseline strategy: fp32, no caches, every window and the zoom-out image encoded for the click).
Without --checkpoint deterministic synthetic weights are used: speed does not depend on the values, but the
zoom-in plan does: synthetic weights call 71% of the body "liver", which would put the whole crop (162
windows) under zoom-in. So the zoom-out pass's answer is replaced by the liver's label (LiverZoomOut): the ROI
is the liver's, as a real model's would be, while every encoder and decoder pass still runs the network.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from run_benchmarks import new_session, strategy

from SegVolSlicerLib.inference.session import SegVolSession
from SegVolSlicerLib.model import load_segvol
from SegVolSlicerLib.prompts import Points, Target
from SegVolSlicerLib.testing.synthetic_ct import make_synthetic_ct
from SegVolSlicerLib.testing.synthetic_weights import save_checkpoint, synthetic_state_dict


class LiverZoomOut:
    """The model, whose zoom-out pass answers with the liver's label (see the module docstring)."""

    def __init__(self, model, session: SegVolSession, labels_kji: np.ndarray):
        self.model, self.device = model, model.device
        cropped = torch.from_numpy(session.prepared.crop_kji(labels_kji == 1).astype(np.float32).copy())
        liver = torch.nn.functional.interpolate(cropped[None, None], size=(32, 256, 256), mode="nearest-exact")
        self.zoom_out_logits = torch.where(liver > 0, 10.0, -10.0).to(model.device)
        self.zoom_out_image, self.zoom_out_embedding = session.prepared.zoom_out_image, None

    def encode_image(self, image):
        embedding = self.model.encode_image(image)
        if image is self.zoom_out_image:
            self.zoom_out_embedding = embedding
        return embedding

    def encode_text(self, names):
        return self.model.encode_text(names)

    def decode(self, image_embedding, text_embedding=None, boxes=None, points=None):
        logits = self.model.decode(image_embedding, text_embedding, boxes, points)
        return self.zoom_out_logits if image_embedding is self.zoom_out_embedding else logits


def resampled_ct(shape):
    """The synthetic CT nearest-resampled to `shape` (K, J, I), its geometry scaled to match."""
    ct = make_synthetic_ct()
    index = [np.linspace(0, n - 1, m).round().astype(int) for n, m in zip(ct.volume.shape, shape)]
    volume = ct.volume[np.ix_(*index)]
    labels = ct.labels[np.ix_(*index)]
    scale = np.diag([*(np.asarray(ct.volume.shape[::-1]) / np.asarray(shape[::-1])), 1.0])
    return volume, labels, ct.ijk_to_ras @ scale


def clicks_in(labels: np.ndarray, count: int) -> list[tuple[np.ndarray, int]]:
    """(IJK, label) clicks spread through the liver (label 1), negative and positive in turn."""
    organ = np.argwhere(labels == 1)
    picks = organ[np.linspace(len(organ) // 4, 3 * len(organ) // 4, count).astype(int)]
    return [(pick[::-1].astype(np.float64), 0 if index % 2 == 0 else 1) for index, pick in enumerate(picks)]


def timed(device, run, *args) -> tuple[float, object]:
    start = time.perf_counter()
    result = run(*args)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def realistic(model, shape, count: int) -> dict:
    volume, labels, ijk_to_ras = resampled_ct(shape)
    device = model.device
    prepare_s, session = timed(device, SegVolSession, model, volume, ijk_to_ras)
    print(f"preprocessing the {shape[2]}x{shape[1]}x{shape[0]} CT (session creation): {prepare_s:.2f} s", flush=True)
    session.model = LiverZoomOut(model, session, labels)
    first_s, first = timed(device, session.segment, Target("liver", text="liver"))
    print(f"first run (text 'liver', encodes everything): {first_s:.1f} s, {first.windows} windows", flush=True)
    if first.roi is None:
        raise SystemExit("the zoom-out found nothing: no zoom-in to correct (try other weights)")
    full_s, refine_s = [], []
    for ijk, label in clicks_in(labels, count):
        target = Target("liver", text="liver", points=Points(ijk[None], [label]))
        seconds, full = timed(device, session.segment, target)
        full_s.append(seconds)
        seconds, fixed = timed(device, session.refine, first, target)
        refine_s.append(seconds)
        print(
            f"click {'+' if label else '-'} at IJK {ijk.astype(int).tolist()}: full {full_s[-1]:.2f} s "
            f"({full.windows} windows), refine {refine_s[-1]:.3f} s ({fixed.windows} window(s)) {fixed.warnings}",
            flush=True,
        )
    full, refine = statistics.median(full_s), statistics.median(refine_s)
    print(
        f"\n{shape[2]}x{shape[1]}x{shape[0]}: median full click {full:.2f} s, median refine {refine:.3f} s, "
        f"{full / refine:.0f}x faster"
    )
    figures = {"preprocess_s": prepare_s, "first_s": first_s, "windows": first.windows}
    return {**figures, "full_click_s": full, "refine_s": refine}


def small(model, count: int) -> None:
    ct = make_synthetic_ct()
    session = SegVolSession(model, ct.volume, ct.ijk_to_ras)
    session.model = LiverZoomOut(model, session, ct.labels)
    first = session.segment(Target("liver", text="liver"))
    official_s, refine_s = [], []
    for ijk, label in clicks_in(ct.labels, count):
        target = Target("liver", text="liver", points=Points(ijk[None], [label]))
        with strategy(model, True, "fp32"):
            official = new_session(model, _Volume(ct.volume, ct.ijk_to_ras), True, 1)  # caches nothing
            official.model = LiverZoomOut(model, official, ct.labels)
            seconds, _ = timed(model.device, official.segment, target)
        official_s.append(seconds)
        seconds, fixed = timed(model.device, session.refine, first, target)
        refine_s.append(seconds)
        print(f"small CT click: official {official_s[-1]:.2f} s, refine {refine_s[-1]:.3f} s ({fixed.windows})")
    official, refine = statistics.median(official_s), statistics.median(refine_s)
    print(
        f"small CT {ct.volume.shape[::-1]}: official click {official:.2f} s, refine {refine:.3f} s, "
        f"{official / refine:.0f}x faster"
    )


class _Volume:
    def __init__(self, array, ijk_to_ras):
        self.array, self.ijk_to_ras = array, ijk_to_ras


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="real weights (default: synthetic weights)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512), metavar=("K", "J", "I"))
    parser.add_argument("--clicks", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="also the small CT against the official click")
    parser.add_argument("--precision", default="fp32", help="image encoder: fp32 (default), auto, bf16, fp16")
    parser.add_argument("--json", help="also write the 512x512x300 figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or save_checkpoint(synthetic_state_dict(), Path(tmp) / "SegVol_v1.pth", "pth")
        model = load_segvol(checkpoint, device=args.device, precision=args.precision)
    print(f"device: {model.device} ({torch.get_num_threads()} CPU threads), precision {model.precision}", flush=True)
    if device_memory := model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    figures = realistic(model, tuple(args.shape), args.clicks)
    figures["precision"], figures["shape_kji"] = model.precision, list(args.shape)
    if device_memory:
        figures["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        print(f"peak GPU memory allocated: {figures['peak_gpu_mb']:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    if args.small:
        small(model, args.clicks)


if __name__ == "__main__":
    main()
