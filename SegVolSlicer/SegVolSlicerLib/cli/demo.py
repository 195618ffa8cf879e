"""`segvol demo`: the first thing to run. The BAAI/SegVol weights and demo CT (downloaded, or a local snapshot
folder) segmented by text, written as a Slicer segmentation and a PNG preview."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..errors import InputError
from .options import add_device
from .progress import ProgressBars, warn

DEMO_TARGETS = ("liver", "spleen", "left kidney", "right kidney")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="download SegVol and its demo CT, segment a few organs, write .seg.nrrd + PNG",
        description="The first thing to run: fetches the BAAI/SegVol weights and demo CT from the Hugging Face "
        "hub (or uses --source), segments a few organs by text, and writes a Slicer segmentation "
        "and a PNG preview.",
    )
    parser.add_argument(
        "--source",
        metavar="FOLDER",
        help="a local BAAI/SegVol snapshot folder holding the weights and Case_image_00001_0000.nii.gz "
        "(default: download into $SEGVOL_HOME or ~/.cache/segvol/BAAI-SegVol)",
    )
    parser.add_argument(
        "--output-dir", default="segvol-demo", metavar="DIR", help="where to write (default ./segvol-demo)"
    )
    parser.add_argument(
        "--text", action="append", metavar="NAME", help=f"organs to segment (default: {', '.join(DEMO_TARGETS)})"
    )
    add_device(parser)
    parser.add_argument("--no-zoom-in", action="store_true", help="zoom-out pass only (faster)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..engine import EngineHost, ModelChoice, VolumeInput
    from ..imageio import Segment, read_volume, write_segmentation
    from ..preview import write_preview_png
    from ..prompts import Target
    from ..terminology import look_for_text
    from ..weights import resolve_demo_ct, resolve_weights

    folder = _snapshot_folder(args.source)
    ct_path = resolve_demo_ct(folder)  # first: offline, its message names every file to fetch
    weights = resolve_weights(folder if args.source else None)
    output_dir = Path(args.output_dir).expanduser()
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create {output_dir}: {error.strerror}") from None
    seg_path, png_path = output_dir / "demo.seg.nrrd", output_dir / "demo.png"

    volume = read_volume(ct_path)
    print(f"demo CT {ct_path}: {volume.shape[2]}x{volume.shape[1]}x{volume.shape[0]} voxels; weights {weights}")
    host = EngineHost(ModelChoice(str(weights), args.device, "auto"), max_sessions=1)
    requested = [Target(look_for_text(name).name, name) for name in args.text or DEMO_TARGETS]
    with ProgressBars([target.name for target in requested]) as bars:
        where = VolumeInput(str(ct_path), volume.array, volume.ijk_to_ras)
        results = host.segment(where, requested, not args.no_zoom_in, bars)
    segments = []
    for result in results:
        warn(result.warnings)
        print(f"{result.name}: {np.count_nonzero(result.mask)} voxels")
        segments.append(Segment.for_target(result.name, result.text, result.mask))
    write_segmentation(seg_path, segments, volume.reference)
    write_preview_png(png_path, volume.array, volume.ijk_to_ras, segments)
    print(f"wrote {seg_path} (open it in 3D Slicer together with {ct_path})")
    print(f"wrote {png_path}")
    return 0


def _snapshot_folder(source: str | None) -> Path:
    """--source as a snapshot folder holding the demo CT (used as it is, never downloaded into), else the
    download folder."""
    from ..weights import DEMO_CT, HUB_URL, default_folder

    if not source:
        return default_folder()
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise InputError(f"--source {folder} is not a folder: give a BAAI/SegVol snapshot folder")
    if not (folder / DEMO_CT).is_file():
        raise InputError(
            f"--source {folder} has no demo CT: download {HUB_URL}/{DEMO_CT} into it, or leave out "
            "--source to download the BAAI/SegVol snapshot"
        )
    return folder
