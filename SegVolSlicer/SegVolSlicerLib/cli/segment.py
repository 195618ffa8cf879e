"""`segvol segment`: one CT, targets from text, box and point prompts (or an existing mask), written as a
Slicer segmentation, a labelmap or a DICOM SEG, with optional statistics and probabilities."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import numpy as np

from ..errors import InputError
from .options import add_model_options, add_sampling, check_output_file, engine_for
from .progress import ProgressBars, warn


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment a CT volume from text, box and point prompts",
        description="Segment IMAGE (NIfTI, NRRD, MHA or a DICOM folder). One target per --text; box and point "
        "prompts (voxel indices i j k, or Slicer markups files) form one target, optionally with one "
        "--text. Coordinates: IJK are 0-based voxel indices of IMAGE (as in Slicer); markups files "
        "are read in LPS or RAS as their coordinateSystem says.",
    )
    parser.add_argument("image", help="CT volume file or DICOM folder")
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="output: *.seg.nrrd (Slicer segmentation, one named coloured segment per target), "
        "*.nii.gz / *.nrrd / *.mha (labelmap: value n = n-th target) or *.dcm (DICOM SEG referencing the "
        "input DICOM series; IMAGE must be a DICOM folder)",
    )
    parser.add_argument(
        "--text",
        action="append",
        metavar="NAME",
        help="anatomy to segment, e.g. liver; repeat for several targets; any text is allowed, "
        "the 222 SegVol training names and common synonyms work best",
    )
    parser.add_argument(
        "--box-ijk",
        nargs=6,
        type=float,
        metavar=("I0", "J0", "K0", "I1", "J1", "K1"),
        help="box prompt: inclusive voxel index range",
    )
    parser.add_argument(
        "--point-ijk",
        nargs=3,
        type=float,
        action="append",
        metavar=("I", "J", "K"),
        help="positive click at voxel (i, j, k); repeat for more",
    )
    parser.add_argument(
        "--negative-point-ijk",
        nargs=3,
        type=float,
        action="append",
        metavar=("I", "J", "K"),
        help="negative click at voxel (i, j, k); repeat for more",
    )
    parser.add_argument(
        "--points",
        metavar="FILE.mrk.json",
        help="Slicer point list or open curve (a stroke: points every 5 mm along it, at most 20); a point whose "
        "description is empty or 'positive' is positive, 'negative' is negative (a stroke: its first point's)",
    )
    parser.add_argument(
        "--negative-points", metavar="FILE.mrk.json", help="Slicer point list or open curve of negative clicks"
    )
    parser.add_argument("--roi", metavar="FILE.mrk.json", help="Slicer ROI (box, may be rotated) as box prompt")
    parser.add_argument("--name", help="segment name for a box/point target (default: its text, else 'SegVol 1')")
    parser.add_argument(
        "--from-mask",
        metavar="MASK",
        help="refine an existing segment (non-zero voxels of MASK, on the CT's grid; needs --name): prompts "
        "are derived from it as the official evaluation derives them from a label (box, points, and the name "
        "as text when SegVol knows it); clicks given then correct it around themselves",
    )
    parser.add_argument(
        "--stats",
        metavar="FILE",
        help="statistics per segment (voxels, mL, HU, bounding box and centroid in LPS mm, confidence) as "
        ".csv or .json",
    )
    parser.add_argument(
        "--probabilities",
        action="store_true",
        help="also write SegVol's probabilities: a FRACTIONAL DICOM SEG for a .dcm output, else "
        "OUT.probabilities.nrrd beside the output (one component per target)",
    )
    add_model_options(parser)
    add_sampling(parser)
    parser.add_argument(
        "--server",
        metavar="URL",
        help="run on a SegVol server (`segvol serve`), e.g. http://gpu-box:8765; --checkpoint, "
        "--device and --precision are then the server's",
    )
    parser.add_argument(
        "--api-key-file", metavar="FILE", help="file holding the server's API key (default: $SEGVOL_API_KEY)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..clinical.outputs import check_output_request, write_outputs
    from ..clinical.statistics import check_statistics_path
    from ..engine import VolumeInput
    from ..imageio import is_segmentation_path, read_ct, read_segmentation
    from ..prompts import Target

    output = Path(args.output)
    check_output_file(output)
    check_output_request(output, args.image, args.probabilities, bool(args.server))
    stats = Path(args.stats) if args.stats else None
    if stats is not None:
        check_statistics_path(stats)
    volume = read_ct(args.image)
    if args.from_mask:
        _check_from_mask_args(args)
        points = _clicks(args, volume)
        names = [args.name]
    else:
        targets = _targets(args, volume)
        names = [target.name for target in targets]
    # Segments already in an output segmentation are kept; same-named ones are updated.
    existing = read_segmentation(output, volume) if is_segmentation_path(output) and output.exists() else []
    host = engine_for(args, probabilities=True)  # the confidence comes from them
    with ProgressBars(names) as bars, contextlib.closing(host):
        where = VolumeInput(args.image, volume.array, volume.ijk_to_ras)
        if args.from_mask:
            results = [_refine_mask(host, where, volume, args.from_mask, args.name, points, bars)]
            # prompted by the mask's box and points: a DICOM SEG says SEMIAUTOMATIC
            targets = [Target(args.name, result.text, points, result.basis.mask_box) for result in results]
        else:
            results = host.segment(where, targets, zoom_in=not args.no_zoom_in, reporter=bars)
    for result in results:
        warn(result.warnings)
        print(
            f"{result.name}: {np.count_nonzero(result.mask)} voxels, "
            f"{_volume_ml(result.mask, volume.ijk_to_ras):.1f} mL"
            + (f", {result.windows} zoom-in window(s)" if result.windows else "")
            + _confidence_text(result)
        )
    kept = [s.name for s in existing if s.name not in {result.name for result in results}]
    weights = None if args.server else args.checkpoint
    warn(write_outputs(output, results, volume, args.image, targets, weights, existing, args.probabilities, stats))
    print(f"wrote {output}" + (f" (kept its other segments: {', '.join(kept)})" if kept else ""))
    if stats is not None:
        print(f"wrote {stats}")
    return 0


def _clicks(args, volume):
    from ..imageio import points_from_files
    from ..prompts import Points

    clicks = []
    if args.point_ijk:
        clicks.append(Points(np.asarray(args.point_ijk), np.ones(len(args.point_ijk), dtype=np.int64)))
    if args.negative_point_ijk:
        clicks.append(
            Points(np.asarray(args.negative_point_ijk), np.zeros(len(args.negative_point_ijk), dtype=np.int64))
        )
    clicks.append(points_from_files(args.points, args.negative_points, volume.ijk_to_ras))
    points = Points.concatenate(*clicks)
    if points is not None:
        points.check_inside(volume.shape)
    return points


def _targets(args, volume):
    from ..imageio import read_roi_corners
    from ..prompts import Box, plan_targets

    points = _clicks(args, volume)
    box = None
    if args.box_ijk:
        box = Box(args.box_ijk[:3], args.box_ijk[3:])
    if args.roi:
        if box is not None:
            raise InputError("give the box either as --box-ijk or as --roi, not both")
        box = Box.from_ras_corners(read_roi_corners(args.roi), volume.ijk_to_ras)
    if box is not None:
        box = box.clipped(volume.shape)
    return plan_targets(args.text or [], points, box, unnamed="SegVol 1", name=args.name)


def _check_from_mask_args(args) -> None:
    if not args.name:
        raise InputError("--from-mask needs --name: the segment's name (its text prompt when SegVol knows it)")
    if args.text or args.box_ijk or args.roi or args.server or args.no_zoom_in:
        raise InputError(
            "--from-mask takes its box and text from the mask and --name, and runs on this computer: "
            "leave out --text, --box-ijk, --roi, --server and --no-zoom-in (clicks may be added)"
        )


def _refine_mask(host, where, volume, mask_path, name, points, reporter):
    """The mask's segment from its evaluation-protocol prompts, then corrected around the clicks (if any)."""
    from ..engine import TargetJob
    from ..imageio import read_label_volume
    from ..prompts import Target

    job = TargetJob(Target(name, text=name), result_key=name)  # the engine keeps it for the clicks
    result = host.segment_from_mask(where, job, read_label_volume(mask_path, volume), reporter)
    if points is None:
        return result
    # The mask's box stands for the box the user did not draw, so the clicks correct locally.
    clicks = TargetJob(Target(name, result.text, points, result.basis.mask_box), name, correct=True)
    return host.segment(where, [clicks], reporter=reporter)[0]


def _volume_ml(mask: np.ndarray, ijk_to_ras: np.ndarray) -> float:
    return float(np.count_nonzero(mask) * abs(np.linalg.det(ijk_to_ras[:3, :3])) / 1000.0)


def _confidence_text(result) -> str:
    from ..clinical.confidence import result_confidence

    confidence = result_confidence(result)
    if confidence is None or confidence.mean_probability is None:
        return ""
    return (
        f", confidence: mean probability {confidence.mean_probability:.2f}, "
        f"{100 * (confidence.uncertain_share or 0):.0f}% uncertain" + (" (low)" if confidence.low else "")
    )
