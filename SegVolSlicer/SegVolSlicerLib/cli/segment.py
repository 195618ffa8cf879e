"""`segvol segment`: one CT, targets from text, box and point prompts (or an existing mask), written as a
Slicer segmentation, a labelmap or a DICOM SEG, with optional statistics and probabilities."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from pathlib import Path

from ..errors import InputError
from .options import (
    add_dicom_options,
    add_model_options,
    add_sampling,
    check_checkpoint,
    check_input,
    check_output_file,
    check_writable,
    engine_for,
    require_extra,
)
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
    add_dicom_options(parser)
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
    output = Path(args.output)
    stats = Path(args.stats) if args.stats else None
    _check_before_reading(args, output, stats)

    import numpy as np

    from ..clinical.outputs import write_outputs
    from ..engine import VolumeInput
    from ..imageio import is_segmentation_path, read_ct, read_label_volume, read_segmentation
    from ..prompts import Box, Target
    from ..volume_checks import labelmap_warning

    volume = read_ct(args.image, args.series, args.allow_gaps)
    not_ct = labelmap_warning(volume.array)
    warn([*volume.warnings, *([not_ct] if not_ct else [])])
    if args.from_mask:
        points = _clicks(args, volume)
        mask = read_label_volume(args.from_mask, volume)
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
            results = [_refine_mask(host, where, mask, args.name, points, bars)]
            # prompted by the mask's box and points: a DICOM SEG says SEMIAUTOMATIC
            targets = [Target(args.name, result.text, points, Box.around_mask(mask)) for result in results]
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
    unit = "intensity" if not_ct else "HU"
    warn(
        write_outputs(output, results, volume, args.image, targets, weights, existing, args.probabilities, stats, unit)
    )
    print(f"wrote {output}" + (f" (kept its other segments: {', '.join(kept)})" if kept else ""))
    if stats is not None:
        print(f"wrote {stats}")
    return 0


def _check_before_reading(args, output: Path, stats: Path | None) -> None:
    """What the arguments alone can tell, at once (the first checks import nothing heavy): the input and the
    weights file are there, every output can be written and spares the inputs, the extras the outputs need
    are installed."""
    from ..files import refuse_overwriting_inputs

    check_input(args.image)
    check_output_file(output)
    if args.from_mask:
        _check_from_mask_args(args)
    if stats is not None:
        check_writable(stats, "--stats")
    check_checkpoint(args)
    inputs = (args.image, args.points, args.negative_points, args.roi, args.from_mask, args.checkpoint)
    refuse_overwriting_inputs([("-o", output), ("--stats", stats)], inputs)

    from ..clinical.dicom_seg import is_dicom_seg_path
    from ..clinical.outputs import check_output_request, probability_map_path
    from ..clinical.statistics import check_statistics_path

    if stats is not None:
        check_statistics_path(stats)
    if args.probabilities and not is_dicom_seg_path(output):
        refuse_overwriting_inputs([("--probabilities", probability_map_path(output))], inputs)
    check_output_request(output, args.image, args.probabilities, bool(args.server))
    if is_dicom_seg_path(output):
        require_extra("dicom", f"-o {output} (a DICOM SEG)")
    if args.server:
        require_extra("client", "--server")


def _clicks(args, volume):
    import numpy as np

    from ..markups import points_from_files
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
    """The run's targets; says before the model runs what of the prompts it will not use as given."""
    import numpy as np

    from ..markups import read_roi_corners
    from ..prompts import NEGATIVE, Box, plan_targets

    points = _clicks(args, volume)
    box = None
    if args.box_ijk:
        box = Box(args.box_ijk[:3], args.box_ijk[3:])
    if args.roi:
        if box is not None:
            raise InputError("give the box either as --box-ijk or as --roi, not both")
        box = Box.from_ras_corners(read_roi_corners(args.roi), volume.ijk_to_ras)
    if box is not None:
        inside = box.clipped(volume.shape)
        if inside != box:
            warn([f"the box {_ijk(box.ijk_min)} .. {_ijk(box.ijk_max)} reaches out of the volume: clipped to "
                  f"{_ijk(inside.ijk_min)} .. {_ijk(inside.ijk_max)}"])  # fmt: skip
        box = inside
    texts = [text for text in args.text or [] if text.strip()]
    if args.name and points is None and box is None:
        if len(texts) != 1:
            raise InputError("--name names one segment: give it with one --text (or with points or a box)")
        return [dataclasses.replace(plan_targets(texts, None, None, unnamed="SegVol 1")[0], name=args.name)]
    if points is not None and not args.no_zoom_in and np.any(points.labels == NEGATIVE):
        warn([NEGATIVE_CLICKS_IN_ZOOM_IN])
    return plan_targets(texts, points, box, unnamed="SegVol 1", name=args.name)


# The official zoom-in prompts its windows with clicks drawn from the zoom-out mask (spec: negative clicks are
# dropped for zoom-in), and its windows replace the zoom-out result inside the region they cover.
NEGATIVE_CLICKS_IN_ZOOM_IN = (
    "negative clicks act only on SegVol's coarse zoom-out pass: the official zoom-in, which makes the mask "
    "inside the organ's region, never sees them, so they rarely change the result. To remove what they mark, "
    "correct the result: segvol segment IMAGE --from-mask RESULT --name NAME --negative-points FILE (or the "
    "Slicer module's corrections); with --no-zoom-in they shape the coarse mask"
)


def _ijk(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _check_from_mask_args(args) -> None:
    if not args.name:
        raise InputError("--from-mask needs --name: the segment's name (its text prompt when SegVol knows it)")
    if args.text or args.box_ijk or args.roi or args.server or args.no_zoom_in:
        raise InputError(
            "--from-mask takes its box and text from the mask and --name, and runs on this computer: "
            "leave out --text, --box-ijk, --roi, --server and --no-zoom-in (clicks may be added)"
        )


def _refine_mask(host, where, mask, name, points, reporter):
    """The mask's segment from its evaluation-protocol prompts, then corrected around the clicks (if any)."""
    from ..engine import TargetJob
    from ..prompts import Box, Target

    job = TargetJob(Target(name, text=name), result_key=name)  # the engine keeps it for the clicks
    result = host.segment_from_mask(where, job, mask, reporter)
    if points is None:
        return result
    # No box of their own: the clicks correct locally within the mask's box, which the engine keeps. Negative
    # clicks for a name SegVol does not know (no text) say what to segment only with that box, so they carry it.
    box = Box.around_mask(mask) if result.text is None and not points.has_positive else None
    clicks = TargetJob(Target(name, result.text, points, box), result_key=name, correct=True)
    return host.segment(where, [clicks], reporter=reporter)[0]


def _volume_ml(mask, ijk_to_ras) -> float:
    import numpy as np

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
