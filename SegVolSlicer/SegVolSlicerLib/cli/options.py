"""What several commands share: the model options (and the one ModelChoice they make), click sampling, Ray,
the server's API key, and the checks of output paths, all made before any model loads."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from .. import runtime
from ..errors import InputError

SEGMENTATION_ENDINGS = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm")
CHECKPOINT_HELP = (
    "SegVol weights: SegVol_v1.pth, a BAAI/SegVol snapshot folder, pytorch_model.bin or .safetensors "
    "(default: download the BAAI/SegVol snapshot from the Hugging Face hub, cached)"
)


# --- option groups ---


def device_choice(text: str) -> str:
    try:
        return runtime.check_device_name(text)
    except InputError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        type=device_choice,
        metavar="{" + ",".join(runtime.DEVICES) + ",cuda:N}",
        help=f"{runtime.DEVICE_HELP} (default: auto)",
    )


def add_model_options(parser: argparse.ArgumentParser, precision: str = "auto") -> None:
    """--checkpoint, --device, --precision, --no-zoom-in and --cache-dir: what `model_choice` reads."""
    parser.add_argument("--checkpoint", metavar="CKPT", help=CHECKPOINT_HELP)
    add_device(parser)
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


def add_sampling(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--point-sampling",
        default="seeded",
        choices=("seeded", "official"),
        help="zoom-in click sampling: 'seeded' (default, reproducible) or 'official' (unseeded "
        "random draws, as the official code)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the 'seeded' click sampling (default 0)")


def add_ray(parser: argparse.ArgumentParser) -> None:
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


# --- what the options make ---


def model_choice(args, precision: str | None = None):
    """The one ModelChoice of a command's model options (`precision` overrides --precision)."""
    from ..engine import ModelChoice

    return ModelChoice(args.checkpoint, args.device, precision or args.precision, args.cache_dir)


def session_options(args, probabilities: bool = False):
    """The sessions' click sampling; `probabilities`: results carry them (confidence, FRACTIONAL SEG)."""
    from ..engine import SessionOptions

    return SessionOptions(
        point_sampling=getattr(args, "point_sampling", "seeded"),
        seed=getattr(args, "seed", 0),
        probabilities=probabilities,
    )


def job_parts(args) -> dict:
    """What a dataset job (batch, evaluate --dataset) takes from the model options."""
    return {
        "choice": model_choice(args),
        "options": session_options(args, probabilities=True),
        "zoom_in": not args.no_zoom_in,
    }


def engine_for(args, precision: str | None = None, probabilities: bool = False):
    """The engine for one command: the model from the model options, loaded on first use, or a SegVol
    server's (--server)."""
    if getattr(args, "server", None):
        from ..client import RemoteEngine

        return RemoteEngine(args.server, api_key(args))
    from ..engine import EngineHost

    return EngineHost(
        model_choice(args, precision), max_sessions=1, session_options=session_options(args, probabilities)
    )


def api_key(args) -> str | None:
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


def check_workers(args) -> None:
    if args.workers is not None and args.workers < 1:
        raise InputError("--workers must be at least 1")
    if args.workers and not args.ray:
        raise InputError("--workers sets the Ray workers: give --ray local or --ray ADDRESS with it")


# --- output checks ---


def check_output_file(path: Path) -> None:
    """A segmentation output we can write: a known ending, not a folder, in a writable folder."""
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


def output_folder(args) -> Path:
    """--output-dir of a dataset run, created and checked writable."""
    output_dir = Path(args.output_dir).expanduser()
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"--output-dir {output_dir} is a file, not a folder")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create --output-dir {output_dir}: {error.strerror}") from None
    check_output_file(output_dir / "check.seg.nrrd")
    return output_dir
