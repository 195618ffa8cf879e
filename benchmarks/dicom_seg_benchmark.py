"""Writing a DICOM SEG against writing a .seg.nrrd: time and file size for the same segments.

    python benchmarks/dicom_seg_benchmark.py [--shape 300 512 512] [--segments 10] [--repeats 2]

A synthetic CT series (--shape K J I, oblique, written with pydicom into a temporary folder) and --segments
ellipsoids (overlapping, as organs and lesions do; each a few percent of the volume) on its grid. Timed, best
of --repeats: `write_dicom_seg` (reading the series' headers, building the BINARY SEG with highdicom, saving)
and `write_segmentation` to .seg.nrrd (the CLI's default writer, gzip-compressed). Target: DICOM SEG at most 2x
the .seg.nrrd time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from SegVolSlicerLib.clinical.dicom_seg import SegAlgorithm, SegSegment, write_dicom_seg
from SegVolSlicerLib.imageio import Segment, read_volume, write_segmentation
from SegVolSlicerLib.testing.synthetic_dicom import write_ct_series


def ellipsoids(shape, count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    masks = []
    for _ in range(count):
        centre = rng.uniform(0.25, 0.75, 3) * shape
        semi = rng.uniform(0.08, 0.2, 3) * shape
        masks.append((sum(((g - c) / a) ** 2 for g, c, a in zip(grids, centre, semi)) <= 1).astype(np.uint8))
    return masks


def best_of(repeats: int, work) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", nargs=3, type=int, default=(300, 512, 512), metavar=("K", "J", "I"))
    parser.add_argument("--segments", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    shape = tuple(args.shape)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        hu = np.random.default_rng(1).integers(-1000, 1000, shape, dtype=np.int16)
        write_ct_series(folder / "CT", hu)
        del hu
        volume = read_volume(folder / "CT")
        masks = ellipsoids(shape, args.segments)
        seg_segments = [SegSegment(f"structure {n + 1}", None, mask) for n, mask in enumerate(masks)]
        nrrd_segments = [Segment(f"structure {n + 1}", mask, (0.5, 0.5, 0.5)) for n, mask in enumerate(masks)]
        algorithm = SegAlgorithm("BAAI/SegVol")
        nrrd_s = best_of(
            args.repeats, lambda: write_segmentation(folder / "r.seg.nrrd", nrrd_segments, volume.reference)
        )
        dicom_s = best_of(
            args.repeats,
            lambda: write_dicom_seg(folder / "r.dcm", folder / "CT", volume.ijk_to_ras, seg_segments, algorithm),
        )
        voxels = sum(int(m.sum()) for m in masks)
        print(f"CT {shape[2]}x{shape[1]}x{shape[0]}, {args.segments} segments, {voxels} segment voxels in all")
        print(f".seg.nrrd : {nrrd_s:6.2f} s  {(folder / 'r.seg.nrrd').stat().st_size / 2**20:7.1f} MiB")
        print(f"DICOM SEG : {dicom_s:6.2f} s  {(folder / 'r.dcm').stat().st_size / 2**20:7.1f} MiB")
        print(f"ratio     : {dicom_s / nrrd_s:6.2f}x (target <= 2x)")


if __name__ == "__main__":
    main()
