"""Deterministic synthetic SegVol weights in the official checkpoint formats.

The real weights cannot be downloaded in CI, so parity with the official code is proven on synthetic
tensors: every tensor is drawn from a generator seeded by its own key name, so the same key always gets
the same values whatever the order or the subset of keys. Scales keep activations in a sane range
(unit-ish LayerNorm gains, fan-in scaled matrices), so logits have both signs and masks are non-trivial.

`official_keys.json` lists the 475 tensors of `SegVol_v1.pth` (no prefix) with their shapes; it was
listed from the official modules (BAAI-DCAI/SegVol @ 5768c97, built on CPU) with the CLIP keys renamed
to the transformers-4.18 layout (`...clip_text_model.text_model....`) that the released files use.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import torch

OFFICIAL_KEYS_FILE = Path(__file__).with_name("official_keys.json")

# Key-name fragments of tensors that are nn.Embedding-like tables or learned tokens.
_EMBEDDING_KEYS = (
    "point_embeddings",
    "not_a_point_embed",
    "no_mask_embed",
    "iou_token",
    "mask_tokens",
    "token_embedding",
    "position_embedding",
    "position_embeddings",
)


def official_key_shapes() -> dict[str, tuple[int, ...]]:
    """Official key -> shape, without the `module.`/`model.` prefix, in state_dict order."""
    with open(OFFICIAL_KEYS_FILE) as f:
        return {key: tuple(shape) for key, shape in json.load(f).items()}


def _is_norm_weight(key: str) -> bool:
    if not key.endswith(".weight"):
        return False
    return (
        "norm" in key
        or "layer_norm" in key
        or key.endswith("output_upscaling.1.weight")
        or ".mask_downscaling.1." in key
        or ".mask_downscaling.4." in key
    )


def synthetic_tensor(key: str, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """The synthetic value of one tensor: a pure function of (key, shape, seed)."""
    if key.endswith("position_ids"):
        return torch.arange(shape[-1], dtype=torch.int64).reshape(shape)
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    values = torch.randn(shape, generator=generator, dtype=torch.float32)
    if key.endswith("positional_encoding_gaussian_matrix"):
        return values  # scale 1.0, as the official module draws it
    if _is_norm_weight(key):
        return 1.0 + 0.1 * values
    if any(fragment in key for fragment in _EMBEDDING_KEYS):
        return 0.2 * values
    if len(shape) == 1:
        return 0.02 * values
    if "output_upscaling" in key and len(shape) == 5:  # ConvTranspose3d weight is (in, out, k, k, k)
        fan_in = shape[0] * math.prod(shape[2:]) // 8  # stride 2: each output sees in*k^3/8 inputs
    else:
        fan_in = math.prod(shape[1:])
    return values / math.sqrt(fan_in)


def synthetic_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """All 475 official tensors (no prefix)."""
    return {key: synthetic_tensor(key, shape, seed) for key, shape in official_key_shapes().items()}


def save_checkpoint(state: dict[str, torch.Tensor], path: str | os.PathLike, fmt: str) -> Path:
    """Write `state` (unprefixed official keys) in one of the official formats.

    fmt: "pth"         GitHub release `SegVol_v1.pth`: {'model': {'module.' + key: ...}, 'epoch': ...}
         "bin"         Hugging Face `pytorch_model.bin`: {'model.' + key: ...}
         "safetensors" the same keys as the .bin, in safetensors
         "hf-folder"   a `BAAI/SegVol`-like snapshot folder: config.json + pytorch_model.bin + tokenizer
    """
    path = Path(path)
    if fmt == "pth":
        torch.save({"model": {"module." + k: v for k, v in state.items()}, "epoch": 2000}, path)
    elif fmt == "bin":
        torch.save({"model." + k: v for k, v in state.items()}, path)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({"model." + k: v.contiguous() for k, v in state.items()}, str(path))
    elif fmt == "hf-folder":
        import shutil

        path.mkdir(parents=True, exist_ok=True)
        save_checkpoint(state, path / "pytorch_model.bin", "bin")
        config = {
            "architectures": ["SegVolModel"],
            "model_type": "segvol",
            "patch_size": [4, 16, 16],
            "spatial_size": [32, 256, 256],
            "test_mode": True,
            "torch_dtype": "float32",
            "auto_map": {
                "AutoConfig": "model_segvol_single.SegVolConfig",
                "AutoModel": "model_segvol_single.SegVolModel",
            },
        }
        (path / "config.json").write_text(json.dumps(config, indent=2))
        tokenizer_dir = Path(__file__).resolve().parent.parent / "data" / "clip-tokenizer"
        for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copyfile(tokenizer_dir / name, path / name)
    else:
        raise ValueError(f"unknown checkpoint format {fmt!r}")
    return path
