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


def _make_computed_buffers(model: SegVol) -> None:
    """The one buffer no checkpoint holds (CLIP's non-persistent position ids), made as transformers makes it."""
    embeddings = model.text_encoder.clip_text_model.embeddings
    positions = torch.arange(embeddings.position_embedding.num_embeddings).expand((1, -1))
    embeddings.register_buffer("position_ids", positions, persistent=False)


def load_segvol(source: str | Path, device: str | torch.device = "auto", precision: str = "fp32") -> SegVol:
    """SegVol with the weights of `source`: SegVol_v1.pth, a BAAI/SegVol snapshot folder, its
    pytorch_model.bin, or a .safetensors file. A snapshot's own tokenizer is used when present, else the
    bundled copy of the same CLIP tokenizer. precision: "fp32" (default: parity with the official code),
    "bf16", "fp16" or "auto" (reduced precision where the hardware runs it natively; see runtime.default_precision)."""
    target = resolve_device(device)
    weights, tokenizer_folder = find_weights(Path(source).expanduser())
    state = read_state_dict(weights)
    # Built on the meta device, the checkpoint's tensors then become the parameters: no random
    # initialisation of 181 M values and no second copy of the 724 MB (a memory-mapped file stays mapped).
    with torch.device("meta"):
        model = SegVol(load_tokenizer(tokenizer_folder)).eval()
    load_state_strict(model, state, weights, assign=True)
    _make_computed_buffers(model)
    left = [name for name, tensor in (*model.named_parameters(), *model.named_buffers()) if tensor.is_meta]
    if left:
        raise RuntimeError(f"SegVol tensors neither in the checkpoint nor computed: {', '.join(left)}")
    model = model.to(target)
    model.set_precision(precision)
    return model
