"""Reading SegVol checkpoints in their official formats, with strict key checking.

Formats: the GitHub release `SegVol_v1.pth` ({'model': {'module.' + key}}), the Hugging Face `BAAI/SegVol`
snapshot folder or its `pytorch_model.bin` ({'model.' + key}), and `.safetensors` with the .bin's keys.
"""

import argparse
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError
from ..weights import WEIGHTS_HINT as _HINT

# The official CLIP tower was saved by transformers 4.18, whose CLIPTextModel had a `text_model.` level.
_OFFICIAL_CLIP = "text_encoder.clip_text_model.text_model."
_OUR_CLIP = "text_encoder.clip_text_model."
# Tensors of the official checkpoint that SegVol never uses: the legacy CLIP `position_ids` buffer and the
# untrained 2-D mask_downscaling stack of the prompt encoder.
_TOLERATED = ("text_encoder.clip_text_model.embeddings.position_ids", "prompt_encoder.mask_downscaling.")


def _data_only_globals() -> list:
    """Plain-data types that training scripts leave next to the weights (an `epoch` saved as a numpy scalar,
    an argparse `args`); allowed so such files load under weights_only, which still refuses any code."""
    multiarray = (np._core if hasattr(np, "_core") else np.core).multiarray
    dtypes = [type(np.dtype(name)) for name in ("bool", "int32", "int64", "float32", "float64")]
    return [argparse.Namespace, np.dtype, np.ndarray, multiarray.scalar, multiarray._reconstruct, *dtypes]


def _read_file(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(f"cannot read {path}: not a valid safetensors file ({error}); {_HINT}") from None
    try:
        with torch.serialization.safe_globals(_data_only_globals()):
            try:  # memory-mapped: the 724 MB file is not copied into RAM twice
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as error:
                if "mmap" not in str(error):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "global" in str(error).lower():  # the weights-only unpickler met a class or function reference
            raise CheckpointError(
                f"refusing to load {path}: it contains Python objects or code, not just tensors "
                "(only weights_only files are loaded); re-download the official weights"
            ) from None
        raise CheckpointError(f"cannot read {path}: corrupt or not a PyTorch checkpoint; {_HINT}") from None
    except Exception as error:  # a damaged pickle can fail with almost any error type (KeyError, IndexError, ...)
        raise CheckpointError(
            f"cannot read {path}: corrupt, truncated or not a PyTorch checkpoint ({type(error).__name__}); {_HINT}"
        ) from None


def _strip_prefix(state: dict) -> dict:
    for prefix in ("module.", "model."):
        if state and all(key.startswith(prefix) for key in state):
            return {key[len(prefix) :]: value for key, value in state.items()}
    return state


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors with SegVolSlicer's key names (no prefix, transformers-5 CLIP layout)."""
    content = _read_file(path)
    if isinstance(content, dict) and isinstance(content.get("model"), dict):
        content = content["model"]  # SegVol_v1.pth also holds optimizer/scheduler state: ignored
    if not isinstance(content, dict) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise CheckpointError(f"{path} is not a SegVol checkpoint (no tensor dictionary inside); {_HINT}")
    state = _strip_prefix(content)
    if not any(key.startswith(("image_encoder.", "mask_decoder.")) for key in state):
        raise CheckpointError(f"{path} is not a SegVol checkpoint (no image_encoder/mask_decoder weights); {_HINT}")
    return {
        (_OUR_CLIP + key[len(_OFFICIAL_CLIP) :] if key.startswith(_OFFICIAL_CLIP) else key): value
        for key, value in state.items()
    }


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(sorted(keys)[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], path: Path, assign: bool = False) -> None:
    """Load every tensor; any missing, unexpected or mis-shaped key is one error naming them.

    assign: the checkpoint's tensors become the parameters (for a model built on the meta device: no copy),
    cast to the model's dtype where they differ."""
    expected = model.state_dict()
    state = {key: value for key, value in state.items() if not key.startswith(_TOLERATED)}
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {_listing(unexpected)}")
    mismatched = [
        f"{key} {tuple(state[key].shape)} vs {tuple(expected[key].shape)}"
        for key in expected
        if key in state and state[key].shape != expected[key].shape
    ]
    if mismatched:
        problems.append(f"wrong shape for {len(mismatched)} key(s): {_listing(mismatched)}")
    if problems:
        raise CheckpointError(f"{path} does not match the SegVol architecture: " + "; ".join(problems))
    if assign:
        state = {key: value.to(expected[key].dtype) for key, value in state.items()}
    model.load_state_dict(state, strict=True, assign=assign)
