"""Building SegVol and loading it from a checkpoint onto a device."""

from pathlib import Path

import torch

from ..runtime import resolve_device
from ..weights import find_weights
from .checkpoint import load_state_strict, read_state_dict
from .segvol import SegVol
from .text_encoder import load_tokenizer


def build_segvol(tokenizer_folder: str | Path | None = None) -> SegVol:
    """A randomly initialised SegVol in eval mode (weights come from `load_segvol`)."""
    return SegVol(load_tokenizer(tokenizer_folder)).eval()


def load_segvol(source: str | Path, device: str | torch.device = "auto", precision: str = "fp32") -> SegVol:
    """SegVol with the weights of `source`: SegVol_v1.pth, a BAAI/SegVol snapshot folder, its
    pytorch_model.bin, or a .safetensors file. A snapshot's own tokenizer is used when present, else the
    bundled copy of the same CLIP tokenizer. precision: "fp32" (default: parity with the official code),
    "bf16", "fp16" or "auto" (reduced precision where the hardware runs it natively; see runtime.default_precision)."""
    target = resolve_device(device)
    weights, tokenizer_folder = find_weights(Path(source).expanduser())
    state = read_state_dict(weights)
    model = build_segvol(tokenizer_folder)
    load_state_strict(model, state, weights)
    model = model.to(target)
    model.set_precision(precision)
    return model
