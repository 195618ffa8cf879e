"""`segvol batch`: every case of files, folders, DICOM folders or a CSV manifest segmented by text, here or
on Ray; a rerun skips the cases done for the same job."""

from __future__ import annotations

import argparse

from ..errors import InputError
from .options import add_model_options, add_ray, add_sampling, check_workers, job_parts, output_folder
from .progress import CaseBar, print_run


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "batch",
        help="segment many CTs (files, folders, DICOM folders, a CSV manifest), here or on Ray",
        description="Segment every case of INPUT... into OUTPUT_DIR/<id>.seg.nrrd (one named segment per --text, "
        "as 'segvol segment' writes it, or <id>.dcm with --output-format dicom-seg) with a row per case in "
        "OUTPUT_DIR/results.csv (id, image, status ok/failed, seconds, warnings, error) and a row per case and "
        "segment in OUTPUT_DIR/stats.csv (volume, HU, bounding box, centroid, confidence). A failed case never "
        "stops the others; a rerun with the same arguments skips the cases done and redoes the failed or "
        "interrupted ones.",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="CT file, folder (each NIfTI/NRRD/MHA file in it is a case; a folder of DICOM files is "
        "one case) or CSV manifest with a column 'image' (and optionally 'id')",
    )
    parser.add_argument(
        "--text",
        action="append",
        required=True,
        metavar="NAME",
        help="anatomy to segment in every case; repeat for several",
    )
    parser.add_argument(
        "--output-dir", required=True, metavar="OUT", help="folder for <id>.seg.nrrd, results.csv and stats.csv"
    )
    parser.add_argument(
        "--output-format",
        choices=("seg-nrrd", "dicom-seg"),
        default="seg-nrrd",
        help="seg-nrrd (default): OUT/<id>.seg.nrrd; dicom-seg: OUT/<id>.dcm, a DICOM SEG referencing the case's "
        "DICOM series (cases that are not DICOM folders fail with a message)",
    )
    add_model_options(parser)
    add_sampling(parser)
    add_ray(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..datasets.cases import discover_cases
    from ..datasets.jobs import SegmentJob
    from ..datasets.runner import run_cases

    check_workers(args)
    texts = tuple(text for text in args.text if text.strip())
    if not texts:
        raise InputError("give at least one --text NAME to segment")
    output_dir = output_folder(args)
    cases = discover_cases(args.inputs)
    if not cases:
        raise InputError("no case to segment in the inputs given")
    job = SegmentJob(**job_parts(args), output_dir=str(output_dir), texts=texts, output_format=args.output_format)
    with CaseBar() as bar:
        summary = run_cases(job, cases, args.ray, args.workers, redo=args.redo, reporter=bar)
    job.combine_statistics(cases, summary.statuses)
    return print_run(summary, len(cases), output_dir)
