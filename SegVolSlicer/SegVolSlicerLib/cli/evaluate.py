"""`segvol evaluate`: the official evaluation protocol (prompts from a label map, Dice) on one case, or on
every case of a dataset (--dataset, here or on Ray)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from .options import (
    add_model_options,
    add_ray,
    add_sampling,
    check_output_file,
    check_workers,
    engine_for,
    job_parts,
    output_folder,
)
from .progress import CaseBar, ProgressBars, print_run, warn

# evaluation.PROMPT_MODES, spelled out: importing it pulls in torch and slows `segvol --help` by seconds.
PROMPT_MODES = ("text", "box", "point", "text+box", "text+point")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="reproduce the official evaluation: prompts from a label map, Dice",
        description="Run the official evaluation protocol: for each --class, prompts are derived from the label "
        "map exactly as the official demo derives them, the zoom-out-zoom-in result is written to "
        "OUTPUT_DIR/<class>.nii.gz (uint8, on the image's grid) and Dice (official formula "
        "2|P&G|/(|P|+|G|+1), also for the zoom-out pass alone) to OUTPUT_DIR/metrics.csv.",
    )
    parser.add_argument("--image", help="CT volume file or DICOM folder")
    parser.add_argument("--label", help="label map on the CT's grid")
    parser.add_argument(
        "--class",
        dest="classes",
        action="append",
        metavar="NAME=VALUE",
        help="a class to evaluate: its name (the text prompt, used as typed) and its label value, e.g. "
        "liver=1; repeat for more (with --dataset: default the dataset.json labels)",
    )
    parser.add_argument(
        "--prompt",
        action="append",
        choices=PROMPT_MODES,
        help="prompt mode (default text+box, the official demo's); with --dataset repeat it to evaluate several",
    )
    parser.add_argument(
        "--dataset",
        metavar="DIR|CSV",
        help="evaluate every case of a dataset: a folder in the MSD/nnU-Net layout (dataset.json, "
        "imagesTr/, labelsTr/) or a CSV with columns image,label[,id]; writes per case "
        "cases/<id>/, and metrics.csv, summary.csv (mean ± sd Dice), dice.png, results.csv",
    )
    add_ray(parser)
    parser.add_argument("--output-dir", required=True, metavar="DIR", help="folder for masks and metrics.csv")
    add_model_options(parser, precision="fp32")
    add_sampling(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..engine import VolumeInput
    from ..evaluation import PromptMode, evaluate_case, mask_file_name
    from ..imageio import read_ct, read_label_volume

    if args.dataset:
        return _evaluate_dataset(args)
    if not args.image or not args.label or not args.classes:
        raise InputError("give --image, --label and --class NAME=VALUE (or --dataset DIR|CSV for a whole dataset)")
    if args.ray or args.workers or args.redo:
        raise InputError("--ray, --workers and --redo run a whole --dataset: one case runs here")
    if len(args.prompt or []) > 1:
        raise InputError("give one --prompt for a single case (several with --dataset)")
    args.prompt = (args.prompt or ["text+box"])[0]
    PromptMode.parse(args.prompt)
    classes = parse_classes(args.classes)
    output_dir = Path(args.output_dir).expanduser()
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"--output-dir {output_dir} is a file, not a folder")
    volume = read_ct(args.image)
    labels = read_label_volume(args.label, volume)
    present = set(np.unique(labels).tolist())
    absent = [f"{name}={value}" for name, value in classes if value not in present]
    if absent:
        raise InputError(
            f"label value(s) absent from {args.label}: {', '.join(absent)} (values present: "
            f"{', '.join(str(v) for v in sorted(present) if v)})"
        )
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create --output-dir {output_dir}: {error.strerror}") from None
    for name, _ in classes:
        check_output_file(output_dir / mask_file_name(name))
    with ProgressBars([name for name, _ in classes]) as bars:
        results = evaluate_case(
            engine_for(args),
            VolumeInput(args.image, volume.array, volume.ijk_to_ras),
            volume.reference,
            labels,
            classes,
            args.prompt,
            output_dir,
            zoom_in=not args.no_zoom_in,
            reporter=bars,
        )
    for result in results:
        warn(result.warnings)
        print(f"{result.name}: Dice {result.dice:.4f} (zoom-out {result.zoom_out_dice:.4f})")
    print(f"wrote {output_dir / 'metrics.csv'}")
    return 0


def parse_classes(specs: Sequence[str]) -> list[tuple[str, int]]:
    """--class NAME=VALUE options as (name, label value) pairs."""
    classes = []
    for spec in specs:
        name, sep, value = spec.rpartition("=")
        if not sep or not name.strip():
            raise InputError(f"--class {spec!r}: write it as NAME=LABEL, e.g. liver=1")
        try:
            classes.append((name.strip(), int(value)))
        except ValueError:
            raise InputError(f"--class {spec!r}: the label value must be an integer") from None
    return classes


def _evaluate_dataset(args) -> int:
    from ..datasets.cases import discover_dataset
    from ..datasets.jobs import EvaluateJob
    from ..datasets.runner import run_cases
    from ..datasets.tables import write_dataset_tables
    from ..evaluation import PromptMode

    check_workers(args)
    if args.image or args.label:
        raise InputError("give either --dataset or --image/--label, not both")
    prompts = tuple(dict.fromkeys(args.prompt or ["text+box"]))
    for prompt in prompts:
        PromptMode.parse(prompt)
    cases, dataset_classes = discover_dataset(args.dataset)
    classes = parse_classes(args.classes) if args.classes else dataset_classes
    if not classes:
        raise InputError(f"{args.dataset} names no classes (no dataset.json 'labels'): give --class NAME=VALUE")
    output_dir = output_folder(args)
    job = EvaluateJob(**job_parts(args), output_dir=str(output_dir), classes=tuple(classes), prompts=prompts)
    with CaseBar() as bar:
        summary = run_cases(job, cases, args.ray, args.workers, redo=args.redo, reporter=bar)
    for row in write_dataset_tables(job, cases, summary.statuses):
        print(
            f"{row['class']} ({row['prompt']}): Dice {float(row['dice_mean']):.4f} ± {float(row['dice_sd']):.4f} "
            f"over {row['cases']} case(s)"
        )
    print(
        f"wrote {output_dir / 'metrics.csv'}, {output_dir / 'summary.csv'}"
        + (f", {output_dir / 'dice.png'}" if (output_dir / "dice.png").exists() else "")
    )
    return print_run(summary, len(cases), output_dir)
