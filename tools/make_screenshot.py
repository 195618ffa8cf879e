"""Render the extension's screenshot (Screenshots/SegVolSlicer-preview.png, EXTENSION_SCREENSHOTURLS): what a
Segment run writes, shown as `segvol demo` shows it.

Each organ of the synthetic CT is segmented through the engine host from a box around it (as a Shift+B box
in the panel), by the test suite's stand-in network (no weights needed), then drawn with
SegVolSlicerLib.preview over the slices where the segments are largest.

    PYTHONPATH=SegVolSlicer:SegVolSlicer/Testing/Python python tools/make_screenshot.py
"""

from pathlib import Path

import numpy as np
from fake_segvol import FakeSegVol

from SegVolSlicerLib.engine import EngineHost, VolumeInput
from SegVolSlicerLib.imageio import Segment
from SegVolSlicerLib.preview import write_preview_png
from SegVolSlicerLib.prompts import Box, Target
from SegVolSlicerLib.testing.synthetic_ct import LABEL_NAMES, make_synthetic_ct

OUTPUT = Path(__file__).resolve().parents[1] / "Screenshots" / "SegVolSlicer-preview.png"


def main() -> None:
    ct = make_synthetic_ct()
    targets = []
    for label, name in sorted(LABEL_NAMES.items()):
        if label == 0:
            continue
        inside = np.argwhere(ct.labels == label)
        targets.append(Target(name, text=name, box=Box(inside.min(axis=0)[::-1], inside.max(axis=0)[::-1])))
    host = EngineHost(model=FakeSegVol())
    results = host.segment(VolumeInput("synthetic CT", ct.volume, ct.ijk_to_ras), targets, zoom_in=True)
    segments = [Segment.for_target(result.name, result.text, result.mask) for result in results]
    write_preview_png(OUTPUT, ct.volume, ct.ijk_to_ras, segments)
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
