"""`segvol`: segment CT volumes with SegVol from the command line.

    segvol segment CT.nii.gz --text liver --text spleen -o out.seg.nrrd
    segvol evaluate --image CT.nii.gz --label GT.nii.gz --class liver=1 --prompt text+box --output-dir eval/
    segvol batch scans/ --text liver --text spleen --output-dir out/ [--ray local|ADDRESS]
    segvol evaluate --dataset Task03_Liver/ --output-dir eval/ [--ray local|ADDRESS]
    segvol demo
    segvol serve --device cuda:0 --api-key-file key.txt --host 0.0.0.0

User mistakes end with one line "segvol: error: ..." on stderr and exit code 2, never a traceback, and
never a partial output file.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import runtime
from .errors import Cancelled, InputError, SegVolError
from .reporting import Reporter

SEGMENTATION_ENDINGS = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm")
DEMO_TARGETS = ("liver", "spleen", "left kidney", "right kidney")


# --- helpers shared by the commands ---


def _fail_if_unwritable(path: Path) -> None:
    if not str(path).lower().endswith(SEGMENTATION_ENDINGS):
        raise InputError(
            f"unsupported output {path}: name it *.seg.nrrd (Slicer segmentation), *.nii.gz (labelmap) or "
            "*.dcm (DICOM SEG, for a DICOM series input)"
        )
    path = path.expanduser()
    if path.is_dir():
        raise InputError(f"cannot write {path}: it is a folder; give a file name ending in .seg.nrrd or .nii.gz")
    if not path.parent.is_dir():
        raise InputError(f"cannot write {path}: folder {path.parent} does not exist")
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"cannot write {path}: permission denied")
    # A real write, not os.access (which says yes to root, and knows nothing of read-only mounts): checked
    # before the model runs, so a long run never ends in an unwritable output.
    try:
        tempfile.TemporaryFile(dir=path.parent).close()
    except OSError as error:
        raise InputError(f"cannot write into {path.parent}: {error.strerror}") from None


def _engine_host(args, precision: str | None = None, probabilities: bool = False):
    """The engine for one command: the model from --checkpoint/--device/--precision, loaded on first use, or
    a SegVol server's (--server). `probabilities`: results carry them (confidence, FRACTIONAL SEG)."""
    from .engine import EngineHost, ModelChoice, SessionOptions

    if getattr(args, "server", None):
        from .client import RemoteEngine

        return RemoteEngine(args.server, _api_key(args))

    choice = ModelChoice(args.checkpoint, args.device, precision or args.precision, args.cache_dir)
    options = SessionOptions(
        point_sampling=getattr(args, "point_sampling", "seeded"),
        seed=getattr(args, "seed", 0),
        probabilities=probabilities,
    )
    return EngineHost(choice, max_sessions=1, session_options=options)


def _api_key(args) -> str | None:
    """The API key from --api-key-file, else $SEGVOL_API_KEY, else None."""
    if getattr(args, "api_key_file", None) is None:
        return os.environ.get("SEGVOL_API_KEY", "").strip() or None
    try:
        key = Path(args.api_key_file).expanduser().read_text().strip()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read the API key file {args.api_key_file}: {error}") from None
    if not key:
        raise InputError(f"the API key file {args.api_key_file} is empty: write the key into it")
    return key


class _ProgressBars(Reporter):
    """A tqdm bar per stage of each target on stderr: the zoom-out pass, then the zoom-in windows; notices
    (the weights loaded, the CPU fallback) as lines. A context manager, so that the last bar is closed even
    when the run fails."""

    def __init__(self, labels: Sequence[str] = ("",)):
        super().__init__()
        self.labels, self.label, self.bar, self.stage = list(labels), labels[0] if labels else "", None, None

    def progress(self, stage: str, done: int, total: int) -> None:
        from tqdm.auto import tqdm

        if stage == "target":
            self.close()
            self.label = self.labels[done]
            return
        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(
                total=total,
                desc=f"{self.label} {stage}".strip(),
                unit="window" if stage == "zoom-in" else "B" if stage == "download" else "pass",
                unit_scale=stage == "download",
                file=sys.stderr,
                leave=False,
            )
        self.bar.update(done - self.bar.n)

    def notice(self, message: str) -> None:
        self.close()
        print(f"segvol: {message}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.stage = None, None

    def __enter__(self) -> _ProgressBars:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class _CaseBar(Reporter):
    """The case count and ETA of a dataset run on stderr (tqdm), its notices (failed cases) as lines. The bar
    starts when the model is loaded (the first progress), so the ETA counts cases only."""

    def __init__(self):
        super().__init__()
        self.bar = None

    def progress(self, stage: str, done: int, total: int) -> None:
        from tqdm.auto import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, initial=done, desc="cases", unit="case", file=sys.stderr, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)

    def notice(self, message: str) -> None:
        if self.bar is None:
            print(f"segvol: {message}", file=sys.stderr)
        else:
            self.bar.write(f"segvol: {message}", file=sys.stderr)

    def __enter__(self) -> _CaseBar:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.bar is not None:
            self.bar.close()


def _warn(messages: Sequence[str]) -> None:
    for message in messages:
        print(f"segvol: warning: {message}", file=sys.stderr)


def _volume_ml(mask: np.ndarray, ijk_to_ras: np.ndarray) -> float:
    return float(np.count_nonzero(mask) * abs(np.linalg.det(ijk_to_ras[:3, :3])) / 1000.0)


# --- segment ---


def _clicks_from_args(args, volume):
    from .imageio import points_from_files
    from .prompts import Points

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


def _targets_from_args(args, volume):
    from .imageio import read_roi_corners
    from .prompts import Box, plan_targets

    points = _clicks_from_args(args, volume)
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


def _confidence_text(result) -> str:
    from .clinical.confidence import result_confidence

    confidence = result_confidence(result)
    if confidence is None or confidence.mean_probability is None:
        return ""
    return (
        f", confidence: mean probability {confidence.mean_probability:.2f}, "
        f"{100 * (confidence.uncertain_share or 0):.0f}% uncertain" + (" (low)" if confidence.low else "")
    )


def cmd_segment(args) -> int:
    from .clinical.outputs import check_output_request, write_outputs
    from .clinical.statistics import check_statistics_path
    from .engine import VolumeInput
    from .imageio import is_segmentation_path, read_ct, read_segmentation
    from .prompts import Target

    output = Path(args.output)
    _fail_if_unwritable(output)
    check_output_request(output, args.image, args.probabilities, bool(args.server))
    stats = Path(args.stats) if args.stats else None
    if stats is not None:
        check_statistics_path(stats)
    volume = read_ct(args.image)
    if args.from_mask:
        _check_from_mask_args(args)
        points = _clicks_from_args(args, volume)
        names = [args.name]
    else:
        targets = _targets_from_args(args, volume)
        names = [target.name for target in targets]
    # Segments already in an output segmentation are kept; same-named ones are updated.
    existing = read_segmentation(output, volume) if is_segmentation_path(output) and output.exists() else []
    host = _engine_host(args, probabilities=True)  # the confidence comes from them
    with _ProgressBars(names) as bars, contextlib.closing(host):
        where = VolumeInput(args.image, volume.array, volume.ijk_to_ras)
        if args.from_mask:
            results = [_refine_mask(host, where, volume, args.from_mask, args.name, points, bars)]
            # prompted by the mask's box and points: a DICOM SEG says SEMIAUTOMATIC
            targets = [Target(args.name, result.text, points, result.basis.mask_box) for result in results]
        else:
            results = host.segment(where, targets, zoom_in=not args.no_zoom_in, reporter=bars)
    for result in results:
        _warn(result.warnings)
        print(
            f"{result.name}: {np.count_nonzero(result.mask)} voxels, "
            f"{_volume_ml(result.mask, volume.ijk_to_ras):.1f} mL"
            + (f", {result.windows} zoom-in window(s)" if result.windows else "")
            + _confidence_text(result)
        )
    kept = [s.name for s in existing if s.name not in {result.name for result in results}]
    weights = None if args.server else args.checkpoint
    _warn(write_outputs(output, results, volume, args.image, targets, weights, existing, args.probabilities, stats))
    print(f"wrote {output}" + (f" (kept its other segments: {', '.join(kept)})" if kept else ""))
    if stats is not None:
        print(f"wrote {stats}")
    return 0


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
    from .engine import TargetJob
    from .imageio import read_label_volume
    from .prompts import Target

    job = TargetJob(Target(name, text=name), result_key=name)  # the engine keeps it for the clicks
    result = host.segment_from_mask(where, job, read_label_volume(mask_path, volume), reporter)
    if points is None:
        return result
    # The mask's box stands for the box the user did not draw, so the clicks correct locally.
    clicks = TargetJob(Target(name, result.text, points, result.basis.mask_box), name, correct=True)
    return host.segment(where, [clicks], reporter=reporter)[0]


# --- evaluate ---


def _parse_classes(specs: Sequence[str]) -> list[tuple[str, int]]:
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


def cmd_evaluate(args) -> int:
    from .engine import VolumeInput
    from .evaluation import PromptMode, evaluate_case, mask_file_name
    from .imageio import read_ct, read_label_volume

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
    classes = _parse_classes(args.classes)
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
        _fail_if_unwritable(output_dir / mask_file_name(name))
    with _ProgressBars([name for name, _ in classes]) as bars:
        results = evaluate_case(
            _engine_host(args),
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
        _warn(result.warnings)
        print(f"{result.name}: Dice {result.dice:.4f} (zoom-out {result.zoom_out_dice:.4f})")
    print(f"wrote {output_dir / 'metrics.csv'}")
    return 0


# --- whole datasets: batch and evaluate --dataset ---


def _batch_output_dir(args) -> Path:
    output_dir = Path(args.output_dir).expanduser()
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"--output-dir {output_dir} is a file, not a folder")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create --output-dir {output_dir}: {error.strerror}") from None
    _fail_if_unwritable(output_dir / "check.seg.nrrd")
    return output_dir


def _check_workers(args) -> None:
    if args.workers is not None and args.workers < 1:
        raise InputError("--workers must be at least 1")
    if args.workers and not args.ray:
        raise InputError("--workers sets the Ray workers: give --ray local or --ray ADDRESS with it")


def _batch_job_parts(args) -> dict:
    from .engine import ModelChoice, SessionOptions

    choice = ModelChoice(args.checkpoint, args.device, args.precision, args.cache_dir)
    options = SessionOptions(point_sampling=args.point_sampling, seed=args.seed, probabilities=True)
    return {"choice": choice, "options": options, "zoom_in": not args.no_zoom_in}


def _print_run(summary, total: int, output_dir: Path) -> int:
    print(
        f"{summary.ok} case(s) done, {len(summary.failed)} failed, {summary.done_before} skipped (done before) "
        f"of {total}; see {output_dir / 'results.csv'}"
    )
    return 1 if summary.failed else 0


def cmd_batch(args) -> int:
    from .datasets.cases import discover_cases
    from .datasets.jobs import SegmentJob
    from .datasets.runner import run_cases

    _check_workers(args)
    texts = tuple(text for text in args.text if text.strip())
    if not texts:
        raise InputError("give at least one --text NAME to segment")
    output_dir = _batch_output_dir(args)
    cases = discover_cases(args.inputs)
    if not cases:
        raise InputError("no case to segment in the inputs given")
    job = SegmentJob(
        **_batch_job_parts(args), output_dir=str(output_dir), texts=texts, output_format=args.output_format
    )
    with _CaseBar() as bar:
        summary = run_cases(job, cases, args.ray, args.workers, redo=args.redo, reporter=bar)
    job.combine_statistics(cases, summary.statuses)
    return _print_run(summary, len(cases), output_dir)


def _evaluate_dataset(args) -> int:
    from .datasets.cases import discover_dataset
    from .datasets.jobs import EvaluateJob
    from .datasets.runner import run_cases
    from .datasets.tables import write_dataset_tables
    from .evaluation import PromptMode

    _check_workers(args)
    if args.image or args.label:
        raise InputError("give either --dataset or --image/--label, not both")
    prompts = tuple(dict.fromkeys(args.prompt or ["text+box"]))
    for prompt in prompts:
        PromptMode.parse(prompt)
    cases, dataset_classes = discover_dataset(args.dataset)
    classes = _parse_classes(args.classes) if args.classes else dataset_classes
    if not classes:
        raise InputError(f"{args.dataset} names no classes (no dataset.json 'labels'): give --class NAME=VALUE")
    output_dir = _batch_output_dir(args)
    job = EvaluateJob(**_batch_job_parts(args), output_dir=str(output_dir), classes=tuple(classes), prompts=prompts)
    with _CaseBar() as bar:
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
    return _print_run(summary, len(cases), output_dir)


# --- demo ---


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(
        source=args.source,
        output_dir=Path(args.output_dir),
        device=args.device,
        zoom_in=not args.no_zoom_in,
        targets=args.text or DEMO_TARGETS,
        reporter_for=_ProgressBars,
    )
    return 0


# --- serve ---


def cmd_serve(args) -> int:
    import uvicorn

    from .engine import EngineHost, ModelChoice, SessionOptions
    from .model.checkpoint import find_weights
    from .server import ServerSettings, check_bind, create_app, expand_devices, listen, uvicorn_config, weights_identity

    api_key = _api_key(args)
    check_bind(args.host, api_key)
    limits = (args.max_sessions, args.idle_timeout, args.max_upload_mb, args.max_memory_mb or 1, args.max_connections)
    if min(limits) <= 0:
        raise InputError(
            "--max-sessions, --idle-timeout, --max-upload-mb, --max-memory-mb and --max-connections must be positive"
        )
    devices = expand_devices(args.device or ["auto"])
    try:  # bound before the model loads: a port in use fails at once
        listener = listen(args.host, args.port)
    except OSError as error:
        raise InputError(
            f"cannot listen on {args.host}:{args.port} ({error.strerror}): choose another --port or --host"
        ) from None
    with listener:
        choices = [ModelChoice(args.checkpoint, device, args.precision, args.cache_dir) for device in devices]
        # each result's confidence goes with its masks: the engines keep the probabilities
        options = SessionOptions(probabilities=True)
        engines = [EngineHost(choice, max_sessions=args.max_sessions, session_options=options) for choice in choices]
        with _ProgressBars() as bars:  # loaded now: a bad checkpoint fails here, and the first request is quick
            models = [engine.model(bars) for engine in engines]
        weights = None
        if engines[0].weights_path is not None:  # /info names the weights and their digest, not their path
            weights = weights_identity(args.checkpoint, find_weights(Path(engines[0].weights_path))[0])
        settings = ServerSettings(
            api_key=api_key,
            max_sessions=args.max_sessions,
            idle_timeout_s=args.idle_timeout,
            max_upload_mb=args.max_upload_mb,
            max_connections=args.max_connections,
            **({"max_memory_mb": args.max_memory_mb} if args.max_memory_mb else {}),
        )
        app = create_app(engines, settings, weights=weights)
        address = f"http://{args.host}:{listener.getsockname()[1]}"
        print(
            f"segvol: serving SegVol on {', '.join(str(model.device) for model in models)} at {address} "
            f"(API documentation: {address}/docs" + ("; API key required" if api_key else "") + ")",
            file=sys.stderr,
        )
        uvicorn.Server(uvicorn_config(app, settings, log_level="info")).run(sockets=[listener])
    return 0


# --- parser ---


def _device(text: str) -> str:
    try:
        return runtime.check_device_name(text)
    except InputError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _serve_device(text: str) -> str:
    return text if text == "cuda:all" else _device(text)


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        type=_device,
        metavar="{" + ",".join(runtime.DEVICES) + ",cuda:N}",
        help=f"{runtime.DEVICE_HELP} (default: auto)",
    )


def _add_common(parser: argparse.ArgumentParser, checkpoint_help: str, precision: str = "auto") -> None:
    parser.add_argument("--checkpoint", metavar="CKPT", help=checkpoint_help)
    _add_device(parser)
    parser.add_argument(
        "--precision",
        default=precision,
        choices=runtime.PRECISIONS,
        help=f"image-encoder precision (default {precision}; auto = bf16 on CUDA and on CPUs with "
        "native bf16, fp16 on older GPUs, else fp32; fp32 is faithful to the official code, "
        "reduced precision stays within Dice 0.99 of it)",
    )
    parser.add_argument(
        "--no-zoom-in", action="store_true", help="run the zoom-out pass only (one model pass; faster, coarser)"
    )
    parser.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="folder for downloaded weights (default: $SEGVOL_HOME or ~/.cache/segvol/BAAI-SegVol)",
    )


def _add_sampling(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--point-sampling",
        default="seeded",
        choices=("seeded", "official"),
        help="zoom-in click sampling: 'seeded' (default, reproducible) or 'official' (unseeded "
        "random draws, as the official code)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the 'seeded' click sampling (default 0)")


def _add_ray(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ray",
        metavar="ADDRESS|local",
        help="run the cases on a Ray cluster: 'local' starts one on this machine, ADDRESS joins a "
        "running one (e.g. 10.0.0.5:6379 after 'ray start --head'); needs pip install "
        "'SegVolSlicer[ray]'",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="Ray worker actors, one model each (default: one per GPU of the cluster, else 1)",
    )
    parser.add_argument(
        "--redo",
        action="store_true",
        help="recompute the cases of OUT done by another job (other texts, classes, weights or options); "
        "without it such a folder is refused",
    )


CHECKPOINT_HELP = (
    "SegVol weights: SegVol_v1.pth, a BAAI/SegVol snapshot folder, pytorch_model.bin or .safetensors "
    "(default: download the BAAI/SegVol snapshot from the Hugging Face hub, cached)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segvol",
        description="SegVol promptable 3-D CT segmentation (BAAI-DCAI/SegVol, zoom-out-zoom-in inference).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    segment = commands.add_parser(
        "segment",
        help="segment a CT volume from text, box and point prompts",
        description="Segment IMAGE (NIfTI, NRRD, MHA or a DICOM folder). One target per --text; box and point "
        "prompts (voxel indices i j k, or Slicer markups files) form one target, optionally with one "
        "--text. Coordinates: IJK are 0-based voxel indices of IMAGE (as in Slicer); markups files "
        "are read in LPS or RAS as their coordinateSystem says.",
    )
    segment.add_argument("image", help="CT volume file or DICOM folder")
    segment.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="output: *.seg.nrrd (Slicer segmentation, one named coloured segment per target), "
        "*.nii.gz / *.nrrd / *.mha (labelmap: value n = n-th target) or *.dcm (DICOM SEG referencing the "
        "input DICOM series; IMAGE must be a DICOM folder)",
    )
    segment.add_argument(
        "--text",
        action="append",
        metavar="NAME",
        help="anatomy to segment, e.g. liver; repeat for several targets; any text is allowed, "
        "the 222 SegVol training names and common synonyms work best",
    )
    segment.add_argument(
        "--box-ijk",
        nargs=6,
        type=float,
        metavar=("I0", "J0", "K0", "I1", "J1", "K1"),
        help="box prompt: inclusive voxel index range",
    )
    segment.add_argument(
        "--point-ijk",
        nargs=3,
        type=float,
        action="append",
        metavar=("I", "J", "K"),
        help="positive click at voxel (i, j, k); repeat for more",
    )
    segment.add_argument(
        "--negative-point-ijk",
        nargs=3,
        type=float,
        action="append",
        metavar=("I", "J", "K"),
        help="negative click at voxel (i, j, k); repeat for more",
    )
    segment.add_argument(
        "--points",
        metavar="FILE.mrk.json",
        help="Slicer point list or open curve (a stroke: points every 5 mm along it, at most 20); a point whose "
        "description is empty or 'positive' is positive, 'negative' is negative (a stroke: its first point's)",
    )
    segment.add_argument(
        "--negative-points", metavar="FILE.mrk.json", help="Slicer point list or open curve of negative clicks"
    )
    segment.add_argument("--roi", metavar="FILE.mrk.json", help="Slicer ROI (box, may be rotated) as box prompt")
    segment.add_argument("--name", help="segment name for a box/point target (default: its text, else 'SegVol 1')")
    segment.add_argument(
        "--from-mask",
        metavar="MASK",
        help="refine an existing segment (non-zero voxels of MASK, on the CT's grid; needs --name): prompts "
        "are derived from it as the official evaluation derives them from a label (box, points, and the name "
        "as text when SegVol knows it); clicks given then correct it around themselves",
    )
    segment.add_argument(
        "--stats",
        metavar="FILE",
        help="statistics per segment (voxels, mL, HU, bounding box and centroid in LPS mm, confidence) as "
        ".csv or .json",
    )
    segment.add_argument(
        "--probabilities",
        action="store_true",
        help="also write SegVol's probabilities: a FRACTIONAL DICOM SEG for a .dcm output, else "
        "OUT.probabilities.nrrd beside the output (one component per target)",
    )
    _add_common(segment, CHECKPOINT_HELP)
    _add_sampling(segment)
    segment.add_argument(
        "--server",
        metavar="URL",
        help="run on a SegVol server (`segvol serve`), e.g. http://gpu-box:8765; --checkpoint, "
        "--device and --precision are then the server's",
    )
    segment.add_argument(
        "--api-key-file", metavar="FILE", help="file holding the server's API key (default: $SEGVOL_API_KEY)"
    )
    segment.set_defaults(run=cmd_segment)

    evaluate = commands.add_parser(
        "evaluate",
        help="reproduce the official evaluation: prompts from a label map, Dice",
        description="Run the official evaluation protocol: for each --class, prompts are derived from the label "
        "map exactly as the official demo derives them, the zoom-out-zoom-in result is written to "
        "OUTPUT_DIR/<class>.nii.gz (uint8, on the image's grid) and Dice (official formula "
        "2|P&G|/(|P|+|G|+1), also for the zoom-out pass alone) to OUTPUT_DIR/metrics.csv.",
    )
    evaluate.add_argument("--image", help="CT volume file or DICOM folder")
    evaluate.add_argument("--label", help="label map on the CT's grid")
    evaluate.add_argument(
        "--class",
        dest="classes",
        action="append",
        metavar="NAME=VALUE",
        help="a class to evaluate: its name (the text prompt, used as typed) and its label value, e.g. "
        "liver=1; repeat for more (with --dataset: default the dataset.json labels)",
    )
    # evaluation.PROMPT_MODES, spelled out: importing it pulls in torch and slows `segvol --help` by seconds.
    evaluate.add_argument(
        "--prompt",
        action="append",
        choices=("text", "box", "point", "text+box", "text+point"),
        help="prompt mode (default text+box, the official demo's); with --dataset repeat it to evaluate several",
    )
    evaluate.add_argument(
        "--dataset",
        metavar="DIR|CSV",
        help="evaluate every case of a dataset: a folder in the MSD/nnU-Net layout (dataset.json, "
        "imagesTr/, labelsTr/) or a CSV with columns image,label[,id]; writes per case "
        "cases/<id>/, and metrics.csv, summary.csv (mean ± sd Dice), dice.png, results.csv",
    )
    _add_ray(evaluate)
    evaluate.add_argument("--output-dir", required=True, metavar="DIR", help="folder for masks and metrics.csv")
    _add_common(evaluate, CHECKPOINT_HELP, precision="fp32")
    _add_sampling(evaluate)
    evaluate.set_defaults(run=cmd_evaluate)

    batch = commands.add_parser(
        "batch",
        help="segment many CTs (files, folders, DICOM folders, a CSV manifest), here or on Ray",
        description="Segment every case of INPUT... into OUTPUT_DIR/<id>.seg.nrrd (one named segment per --text, "
        "as 'segvol segment' writes it, or <id>.dcm with --output-format dicom-seg) with a row per case in "
        "OUTPUT_DIR/results.csv (id, image, status ok/failed, seconds, warnings, error) and a row per case and "
        "segment in OUTPUT_DIR/stats.csv (volume, HU, bounding box, centroid, confidence). A failed case never "
        "stops the others; a rerun with the same arguments skips the cases done and redoes the failed or "
        "interrupted ones.",
    )
    batch.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="CT file, folder (each NIfTI/NRRD/MHA file in it is a case; a folder of DICOM files is "
        "one case) or CSV manifest with a column 'image' (and optionally 'id')",
    )
    batch.add_argument(
        "--text",
        action="append",
        required=True,
        metavar="NAME",
        help="anatomy to segment in every case; repeat for several",
    )
    batch.add_argument(
        "--output-dir", required=True, metavar="OUT", help="folder for <id>.seg.nrrd, results.csv and stats.csv"
    )
    batch.add_argument(
        "--output-format",
        choices=("seg-nrrd", "dicom-seg"),
        default="seg-nrrd",
        help="seg-nrrd (default): OUT/<id>.seg.nrrd; dicom-seg: OUT/<id>.dcm, a DICOM SEG referencing the case's "
        "DICOM series (cases that are not DICOM folders fail with a message)",
    )
    _add_common(batch, CHECKPOINT_HELP)
    _add_sampling(batch)
    _add_ray(batch)
    batch.set_defaults(run=cmd_batch)

    demo = commands.add_parser(
        "demo",
        help="download SegVol and its demo CT, segment a few organs, write .seg.nrrd + PNG",
        description="The first thing to run: fetches the BAAI/SegVol weights and demo CT from the Hugging Face "
        "hub (or uses --source), segments a few organs by text, and writes a Slicer segmentation "
        "and a PNG preview.",
    )
    demo.add_argument(
        "--source",
        metavar="FOLDER",
        help="a local BAAI/SegVol snapshot folder holding the weights and Case_image_00001_0000.nii.gz "
        "(default: download into $SEGVOL_HOME or ~/.cache/segvol/BAAI-SegVol)",
    )
    demo.add_argument(
        "--output-dir", default="segvol-demo", metavar="DIR", help="where to write (default ./segvol-demo)"
    )
    demo.add_argument(
        "--text", action="append", metavar="NAME", help=f"organs to segment (default: {', '.join(DEMO_TARGETS)})"
    )
    _add_device(demo)
    demo.add_argument("--no-zoom-in", action="store_true", help="zoom-out pass only (faster)")
    demo.set_defaults(run=cmd_demo)

    serve = commands.add_parser(
        "serve",
        help="serve SegVol to remote clients (Slicer, `segvol segment --server`)",
        description="Load SegVol once and serve it over HTTP (API documentation at /docs). Clients upload a volume "
        "once per session and send prompts. Several --device options (or --device cuda:all) load one model per "
        "device: each new session goes to the least-loaded device and stays there; each device runs one "
        "request at a time.",
    )
    serve.add_argument("--checkpoint", metavar="CKPT", help=CHECKPOINT_HELP)
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1, this computer only; any other needs an API key)",
    )
    serve.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    serve.add_argument(
        "--device",
        action="append",
        type=_serve_device,
        metavar="{" + ",".join(runtime.DEVICES) + ",cuda:N,cuda:all}",
        help=f"{runtime.DEVICE_HELP}, or cuda:all (every GPU); repeat for one model per device (default: auto)",
    )
    serve.add_argument(
        "--precision", default="auto", choices=runtime.PRECISIONS, help="image-encoder precision (default auto)"
    )
    serve.add_argument("--cache-dir", metavar="DIR", help="folder for downloaded weights")
    serve.add_argument(
        "--api-key-file",
        metavar="FILE",
        help="file holding the key clients must send (default: $SEGVOL_API_KEY; none: loopback only)",
    )
    serve.add_argument(
        "--max-sessions",
        type=int,
        default=8,
        help="volumes open at once (default 8); one more is refused as busy (HTTP 503)",
    )
    serve.add_argument(
        "--idle-timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="seconds after which a session without requests is closed (default 600)",
    )
    serve.add_argument(
        "--max-upload-mb", type=float, default=2048.0, help="largest compressed volume upload in MB (default 2048)"
    )
    serve.add_argument(
        "--max-memory-mb",
        type=float,
        help="memory held for clients at once, in MB: every session's voxels and the models' sessions; a "
        "volume that does not fit is refused (default: half of this machine's memory)",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        default=256,
        help="connections and requests at once (default 256); more are answered 503",
    )
    serve.set_defaults(run=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except Cancelled:
        print("segvol: cancelled", file=sys.stderr)
        return 130
    except SegVolError as error:
        print(f"segvol: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("segvol: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("segvol: error: out of memory: use a machine with more memory or a smaller volume", file=sys.stderr)
        return 2
    except RuntimeError as error:
        if runtime.is_out_of_memory(error):  # the GPU's is handled by the engine: here the CPU's
            print("segvol: error: out of memory: use a machine with more memory or a smaller volume", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
