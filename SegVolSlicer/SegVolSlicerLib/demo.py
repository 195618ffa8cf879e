"""`segvol demo`: the BAAI/SegVol demo CT segmented by text, as a Slicer segmentation and a PNG preview."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from .engine import EngineHost, ModelChoice, VolumeInput
from .errors import InputError
from .imageio import Segment, read_volume, write_segmentation
from .preview import write_preview_png
from .prompts import Target
from .reporting import NO_REPORT
from .terminology import look_for_text
from .weights import DEMO_CT, HUB_URL, default_folder, resolve_demo_ct, resolve_weights


def run_demo(
    source: str | None,
    output_dir: Path,
    device: str = "auto",
    zoom_in: bool = True,
    targets: Sequence[str] = ("liver",),
    reporter_for=None,
) -> tuple[Path, Path]:
    """Segment `targets` in the demo CT; returns (segmentation path, PNG path). `reporter_for(names)`: a
    context manager that is also the run's reporter (the CLI's tqdm bars), or None."""
    folder = Path(source).expanduser() if source else default_folder()
    if source and not folder.is_dir():
        raise InputError(f"--source {folder} is not a folder: give a BAAI/SegVol snapshot folder")
    if source and not (folder / DEMO_CT).is_file():  # a local folder is used as it is, never downloaded into
        raise InputError(
            f"--source {folder} has no demo CT: download {HUB_URL}/{DEMO_CT} into it, or leave out "
            "--source to download the BAAI/SegVol snapshot"
        )
    ct_path = resolve_demo_ct(folder)  # first: offline, its message names every file to fetch
    weights = resolve_weights(folder if source else None)
    output_dir = output_dir.expanduser()
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create {output_dir}: {error.strerror}") from None
    seg_path, png_path = output_dir / "demo.seg.nrrd", output_dir / "demo.png"

    volume = read_volume(ct_path)
    print(f"demo CT {ct_path}: {volume.shape[2]}x{volume.shape[1]}x{volume.shape[0]} voxels; weights {weights}")
    host = EngineHost(ModelChoice(str(weights), device, "auto"), max_sessions=1)
    requested = [Target(look_for_text(name).name, name) for name in targets]
    with reporter_for([t.name for t in requested]) if reporter_for else nullcontext(NO_REPORT) as reporter:
        results = host.segment(VolumeInput(str(ct_path), volume.array, volume.ijk_to_ras), requested, zoom_in, reporter)
    segments = []
    for result in results:
        for warning in result.warnings:
            print(f"segvol: warning: {warning}", file=sys.stderr)
        print(f"{result.name}: {np.count_nonzero(result.mask)} voxels")
        segments.append(Segment.for_target(result.name, result.text, result.mask))
    write_segmentation(seg_path, segments, volume.reference)
    write_preview_png(png_path, volume.array, volume.ijk_to_ras, segments)
    print(f"wrote {seg_path} (open it in 3D Slicer together with {ct_path})")
    print(f"wrote {png_path}")
    return seg_path, png_path
