"""Building SegVol and loading it from a checkpoint onto a device."""

from pathlib import Path

import torch

from ..errors import InputError
from .checkpoint import find_weights, load_state_strict, read_state_dict
from .segvol import SegVol
from .text_encoder import load_tokenizer

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" picks CUDA, then Apple MPS, then CPU; an unavailable explicit choice is a user error."""
    name = str(device)
    kind = name.split(":")[0]
    if kind not in DEVICES:
        raise InputError(f"unknown device {name!r}: choose one of {', '.join(DEVICES)}")
    mps_available = torch.backends.mps.is_available()
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_available else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA was requested but no CUDA GPU is usable here: use device 'cpu' or 'auto'")
    if kind == "mps" and not mps_available:
        raise InputError("Apple MPS was requested but is not available here: use device 'cpu' or 'auto'")
    return torch.device(name)


def build_segvol(tokenizer_folder: str | Path | None = None) -> SegVol:
    """A randomly initialised SegVol in eval mode (weights come from `load_segvol`)."""
    return SegVol(load_tokenizer(tokenizer_folder)).eval()


def load_segvol(source: str | Path, device: str | torch.device = "auto", precision: str = "fp32") -> SegVol:
    """SegVol with the weights of `source`: SegVol_v1.pth, a BAAI/SegVol snapshot folder, its
    pytorch_model.bin, or a .safetensors file. A snapshot's own tokenizer is used when present, else the
    bundled copy of the same CLIP tokenizer. precision: "fp32" (default: parity with the official code),
    "bf16", "fp16" or "auto" (reduced precision where the hardware runs it natively; see default_precision)."""
    target = resolve_device(device)
    weights, tokenizer_folder = find_weights(Path(source).expanduser())
    state = read_state_dict(weights)
    model = build_segvol(tokenizer_folder)
    load_state_strict(model, state, weights)
    model = model.to(target)
    model.set_precision(precision)
    return model
