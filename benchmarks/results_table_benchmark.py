"""GUI-thread time of the panel's Results table after a run: 10 segments on a 512x512x300 CT.

The worker computes each segment's statistics and confidence (SegVolSlicerLogic.summarize: volume, HU,
confidence from the probabilities); the GUI thread only tags the segments and fills the table
(clinical_results.show_statistics + statistics_html). Before, all of it ran on the GUI thread. Both parts
are timed here on real MRML (slicer-core), best of --repeats:

    PYTHONPATH=SegVolSlicer:SegVolSlicer/Testing/Python python benchmarks/results_table_benchmark.py
"""

from __future__ import annotations

import argparse
import time
import types

import numpy as np
import slicer_core_env  # real MRML, and the stand-ins the module file needs

from SegVolSlicerLib.slicer import clinical_results

SHAPE_KJI = (300, 512, 512)
SEGMENTS = 10


def make_results(rng):
    """10 results sharing one organ-sized mask and one probability map (memory: ~0.4 GB, not 4 GB)."""
    voxels = rng.integers(-1000, 1500, SHAPE_KJI, dtype=np.int16)
    probabilities = np.zeros(SHAPE_KJI, np.float32)
    probabilities[100:200, 150:350, 150:350] = 0.9  # an 8 L organ at 0.7 mm x 0.7 mm x 1 mm
    mask = (probabilities > 0.5).astype(np.uint8)
    results = [types.SimpleNamespace(mask=mask, probabilities=probabilities) for _ in range(SEGMENTS)]
    return voxels, results


def best(repeats, run):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = run()
        times.append(time.perf_counter() - start)
    return min(times), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    scene = slicer_core_env.setup()
    voxels, results = make_results(np.random.default_rng(0))
    ijk_to_ras = np.diag([0.7, 0.7, 1.0, 1.0])
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    names = [f"organ {n}" for n in range(SEGMENTS)]
    segment_ids = [segmentation.GetSegmentation().AddEmptySegment("", name) for name in names]

    worker_s, statistics = best(
        args.repeats, lambda: clinical_results.results_statistics(names, results, voxels, ijk_to_ras)
    )

    def gui_thread():
        shown = clinical_results.show_statistics(segmentation, segment_ids, statistics)
        return clinical_results.statistics_html(shown)

    gui_s, html = best(args.repeats, gui_thread)
    assert html.count("<tr>") == SEGMENTS + 1
    print(f"{SEGMENTS} segments on {SHAPE_KJI[2]}x{SHAPE_KJI[1]}x{SHAPE_KJI[0]}, best of {args.repeats}")
    print("| part | thread | time |")
    print("| --- | --- | ---: |")
    print(f"| statistics and confidence (summarize) | worker | {worker_s * 1000:.0f} ms |")
    print(f"| segment tags and the table | GUI | {gui_s * 1000:.1f} ms |")
    print(f"| before: all of it | GUI | {(worker_s + gui_s) * 1000:.0f} ms |")
    slicer_core_env.teardown()


if __name__ == "__main__":
    main()
