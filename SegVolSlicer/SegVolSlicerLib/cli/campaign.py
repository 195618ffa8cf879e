"""`segvol campaign`: an annotation campaign's progress (`status`), its accepted cases as an nnU-Net v2 dataset
(`export --nnunet`), and its recorded prompts rerun with other weights or options (`replay`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from .options import (
    add_dicom_options,
    add_model_options,
    add_ray,
    add_sampling,
    check_workers,
    job_parts,
    output_folder,
)
from .progress import CaseBar, print_run

DIR_HELP = (
    "the campaign: a folder of CTs, an MSD/nnU-Net dataset folder, a `segvol batch` output folder, or the "
    "folder of a CSV manifest annotated in Slicer's SegVol panel"
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "campaign",
        help="an annotation campaign: progress, nnU-Net export, replay of its prompts",
        description="Work with a dataset annotated in Slicer's SegVol panel (its Dataset section).",
    )
    commands = parser.add_subparsers(dest="campaign_command", required=True, metavar="ACTION")

    status = commands.add_parser(
        "status", help="progress, accepted per annotator, flagged cases", description="How far the campaign is."
    )
    status.add_argument("dir", metavar="DIR", help=DIR_HELP)
    status.set_defaults(run=run_status)

    export = commands.add_parser(
        "export",
        help="the accepted cases as an nnU-Net v2 raw dataset",
        description="Write the accepted cases as an nnU-Net v2 raw dataset (imagesTr/<case>_0000.nii.gz, "
        "labelsTr/<case>.nii.gz, dataset.json), checked against nnU-Net's rules, ready for "
        "nnUNetv2_plan_and_preprocess.",
    )
    export.add_argument("dir", metavar="DIR", help=DIR_HELP)
    export.add_argument(
        "--nnunet",
        required=True,
        metavar="OUT",
        help="the new dataset folder, named DatasetNNN_Name (e.g. in nnUNet_raw)",
    )
    export.set_defaults(run=run_export)

    replay = commands.add_parser(
        "replay",
        help="rerun each accepted case's recorded prompts (e.g. with new weights); Dice against the label",
        description="Rerun the AI steps recorded with each accepted case, in order, with the weights and options "
        "given here, into OUT/cases/<id>/<id>.seg.nrrd, with Dice against the accepted label in "
        "OUT/cases/<id>/metrics.csv and OUT/metrics.csv, summary.csv and dice.png. Hand edits are not replayed. "
        "A rerun skips the cases done for the same job.",
    )
    replay.add_argument("dir", metavar="DIR", help=DIR_HELP)
    replay.add_argument("--output-dir", required=True, metavar="OUT", help="a new folder outside the campaign")
    add_dicom_options(replay, series=False)
    add_model_options(replay)
    add_sampling(replay)
    add_ray(replay)
    replay.set_defaults(run=run_replay)


def run_status(args: argparse.Namespace) -> int:
    from ..campaign.campaign import Campaign
    from ..campaign.state import IN_PROGRESS

    campaign = Campaign.open(args.dir)
    states = campaign.all_states()
    progress = campaign.progress()
    print(f"{campaign.source.path} ({campaign.source.kind}): {progress.summary}")
    hours = sum(s.seconds for s in states.values()) / 3600
    print(f"time spent: {hours:.1f} h")
    for annotator, count in progress.accepted_by.items():
        print(f"accepted by {annotator}: {count}")
    for case_id, state in states.items():
        if state.status == IN_PROGRESS:
            holder = campaign.locks.holder(case_id)
            where = f"open by {holder['owner']}" if holder else "not open"
            print(f"in progress: {case_id} ({state.annotator}, {where})")
    for case_id, annotator, comment in progress.flagged:
        print(f"flagged: {case_id} ({annotator}): {comment or 'no comment'}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from ..campaign.campaign import Campaign
    from ..campaign.export import export_nnunet

    campaign = Campaign.open(args.dir)
    with CaseBar() as bar:
        export = export_nnunet(campaign, Path(args.nnunet), bar)
    for warning in export.warnings:
        print(f"warning: {warning}")
    classes = ", ".join(f"{name}={value}" for name, value in export.classes)
    print(f"{len(export.cases)} case(s) written to {export.folder} (labels: {classes})")
    return 0


def run_replay(args: argparse.Namespace) -> int:
    from ..campaign.campaign import Campaign
    from ..campaign.replay import ReplayJob, replay_cases
    from ..datasets.runner import run_cases
    from ..datasets.tables import write_dataset_tables

    check_workers(args)
    campaign = Campaign.open(args.dir)
    folder = Path(campaign.source.folder).resolve()
    out = Path(args.output_dir).expanduser().resolve()
    if out == folder or folder in out.parents:
        raise InputError(f"--output-dir {out} lies inside the campaign folder {folder}: give a folder outside it")
    output_dir = output_folder(args)
    cases, records = replay_cases(campaign)
    job = ReplayJob(
        **job_parts(args),
        output_dir=str(output_dir),
        campaign_folder=str(folder),
        classes=campaign.source.classes,
        records=records,
    )
    with CaseBar() as bar:
        summary = run_cases(job, cases, args.ray, args.workers, redo=args.redo, reporter=bar)
    for row in write_dataset_tables(job, cases, summary.statuses):
        print(f"{row['class']}: Dice {row['dice_mean']} ± {row['dice_sd']} over {row['cases']} case(s)")
    return print_run(summary, len(cases), output_dir)
