"""Where the SegVol weights (and the demo CT) come from: a local file or folder, or the `BAAI/SegVol` hub.

Without an explicit source, the weights live in one folder, `$SEGVOL_HOME` or ~/.cache/segvol/BAAI-SegVol:
if it already holds them they are used as they are; otherwise huggingface_hub downloads the snapshot's
weights and tokenizer files into it (resumable, with progress). Offline, the error says which files to put
there by hand.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .errors import Cancelled, CheckpointError

# The weights files a folder may hold, in the order they are looked for, and the tokenizer files beside them.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "SegVol_v1.pth")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
WEIGHTS_HINT = (
    "use the GitHub release SegVol_v1.pth, or the BAAI/SegVol Hugging Face snapshot folder (pytorch_model.bin)"
)
HUB_REPO = "BAAI/SegVol"
HUB_URL = f"https://huggingface.co/{HUB_REPO}/resolve/main"
DEMO_CT = "Case_image_00001_0000.nii.gz"
_SNAPSHOT_FILES = [
    "config.json",
    "pytorch_model.bin",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
]

Progress = Callable[[str, int, int], None]


def default_folder() -> Path:
    return Path(os.environ.get("SEGVOL_HOME") or Path.home() / ".cache" / "segvol" / "BAAI-SegVol").expanduser()


def find_weights(source: Path) -> tuple[Path, Path | None]:
    """(weights file, tokenizer folder or None) for a file or a snapshot folder (no torch: a refusal is quick)."""
    if not source.exists():
        raise CheckpointError(f"weights not found: {source} does not exist; {WEIGHTS_HINT}")
    if source.is_file():
        return source, None
    for name in WEIGHT_FILES:
        if (source / name).is_file():
            has_tokenizer = any((source / t).is_file() for t in TOKENIZER_FILES)
            return source / name, source if has_tokenizer else None
    raise CheckpointError(
        f"no SegVol weights in folder {source} (looked for {', '.join(WEIGHT_FILES)}); {WEIGHTS_HINT}"
    )


def _progress_bar(progress: Progress | None):
    """A tqdm class reporting byte progress to `progress` ("download", done, total), or None for tqdm's own."""
    if progress is None:
        return None

    from tqdm.auto import tqdm  # here, not at import: Slicer's panel reads default_folder() before installing

    class _Reporting(tqdm):
        def update(self, n=1):
            shown = super().update(n)
            # huggingface_hub also drives a files-done bar and an xet "Reconstructing" bar with this class;
            # only the bytes received tell the user how far the 724 MB download is.
            if self.unit == "B" and not str(self.desc).startswith("Reconstruct"):
                progress("download", int(self.n), int(self.total or 0))
            return shown

    return _Reporting


def _offline_help(folder: Path, reason: str, demo_ct: bool = False, demo: bool = False) -> CheckpointError:
    """What to fetch by hand when the hub cannot be used (the weights, and the demo CT if that was asked for);
    `demo`: for `segvol demo`, whose local folder is --source (it has no checkpoint option)."""
    what = "the demo CT" if demo_ct else "the SegVol weights"
    files = [f"{HUB_URL}/pytorch_model.bin (724 MB)", f"{HUB_URL}/config.json"] + (
        [f"{HUB_URL}/{DEMO_CT}"] if demo_ct else []
    )
    instead = (
        "or give a folder holding them as segvol demo --source FOLDER"
        if demo or demo_ct
        else "or give a local SegVol_v1.pth or snapshot folder as the checkpoint"
    )
    return CheckpointError(
        f"cannot download {what} from the Hugging Face hub ({HUB_REPO}): {reason}. Download "
        f"{', '.join(files[:-1])} and {files[-1]} into {folder}, {instead}."
    )


def _why_unreachable(error: Exception) -> str:
    """One whole sentence on why the hub did not answer (its own messages are long and get cut)."""
    status = getattr(getattr(error, "response", None), "status_code", None)
    if status is not None:
        return f"the hub answered HTTP {status}"
    name = type(error).__name__
    if "Timeout" in name:
        return "the hub did not answer in time"
    return "the hub cannot be reached from this computer (no network connection, or a firewall or proxy blocks it)"


def _why_interrupted(error: Exception) -> str:
    status = getattr(getattr(error, "response", None), "status_code", None)
    if status is not None:
        return f"the hub answered HTTP {status}"
    detail = str(error).strip().splitlines()
    return "the download broke off" + (f" ({detail[0].rstrip('.')})" if detail else "")


def _check_hub(folder: Path, demo_ct: bool = False, demo: bool = False) -> None:
    """One quick request before downloading: offline, the hub's client would retry for half a minute."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url

    if constants.HF_HUB_OFFLINE:
        raise _offline_help(folder, "HF_HUB_OFFLINE is set, so nothing is downloaded", demo_ct, demo)
    try:
        get_hf_file_metadata(hf_hub_url(HUB_REPO, "config.json"), timeout=10)
    except Exception as error:  # connection, timeout, HTTP errors: each is a reason to download by hand
        raise _offline_help(folder, _why_unreachable(error), demo_ct, demo) from None


def _has_weights(folder: Path) -> bool:
    return any((folder / name).is_file() for name in WEIGHT_FILES)


def _check_weights_file(path: Path) -> None:
    """Refuse what is plainly not a checkpoint (an HTML error page, a Git LFS pointer) before loading it:
    PyTorch's unpickler fails on such text with arbitrary errors rather than a message."""
    try:
        with open(path, "rb") as file:
            head = file.read(64)
    except OSError as error:
        raise CheckpointError(f"cannot read {path}: {error.strerror}") from None
    if path.suffix == ".safetensors" or head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # zip or pickle
        return
    what = (
        "a Git LFS pointer, not the weights"
        if head.startswith(b"version https://git-lfs")
        else "not a PyTorch checkpoint"
    )
    raise CheckpointError(
        f"{path} is {what}: download {HUB_URL}/pytorch_model.bin (724 MB) or the GitHub "
        "release SegVol_v1.pth and give its path"
    )


def resolve_weights(
    source: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    demo: bool = False,
) -> Path:
    """A validated weights path: `source` (SegVol_v1.pth, a snapshot folder, pytorch_model.bin, .safetensors)
    or, if None, the `BAAI/SegVol` snapshot folder in `cache_dir` (default `default_folder()`), downloaded
    when missing. `demo`: the messages speak to `segvol demo`."""
    if source is not None:
        path = Path(source).expanduser()
        weights_file, _ = find_weights(path)  # raises CheckpointError naming what is wrong
        _check_weights_file(weights_file)
        return path
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_folder()
    if _has_weights(folder):
        return folder
    from huggingface_hub import snapshot_download

    _check_hub(folder, demo=demo)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        snapshot_download(
            HUB_REPO, local_dir=folder, allow_patterns=_SNAPSHOT_FILES, tqdm_class=_progress_bar(progress)
        )
    except Cancelled:  # the partial file stays: the next download resumes from it
        raise
    except Exception as error:  # HTTP errors, or the hub's HTTP client failing mid-download
        raise _offline_help(folder, _why_interrupted(error), demo=demo) from None
    if not _has_weights(folder):
        raise CheckpointError(
            f"the {HUB_REPO} snapshot downloaded into {folder} has no weights file "
            f"({', '.join(WEIGHT_FILES)}); download {HUB_URL}/pytorch_model.bin there by hand"
        )
    return folder


def resolve_demo_ct(folder: str | os.PathLike | None = None, progress: Progress | None = None) -> Path:
    """The demo CT of the `BAAI/SegVol` snapshot (Case_image_00001_0000.nii.gz) in `folder`, downloaded when
    missing."""
    folder = Path(folder).expanduser() if folder is not None else default_folder()
    path = folder / DEMO_CT
    if path.is_file():
        return path
    from huggingface_hub import hf_hub_download

    _check_hub(folder, demo_ct=True)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return Path(hf_hub_download(HUB_REPO, DEMO_CT, local_dir=folder, tqdm_class=_progress_bar(progress)))
    except Exception as error:  # HTTP errors, or the hub's HTTP client failing mid-download
        raise _offline_help(folder, _why_interrupted(error), demo_ct=True) from None
