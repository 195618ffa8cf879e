"""Text encoder: CLIP's text tower (transformers) + `dim_align` to the 768-wide prompt space."""

from pathlib import Path

import torch
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizerFast

from ..errors import InputError

BUNDLED_TOKENIZER = Path(__file__).resolve().parent.parent / "data" / "clip-tokenizer"
PROMPT_TEMPLATE = "A computerized tomography of a {}."
MAX_TOKENS = 77  # CLIP's position table; the official code crashes beyond it


def load_tokenizer(folder: str | Path | None = None) -> CLIPTokenizerFast:
    """The CLIP BPE tokenizer of `folder` (a hub snapshot's own files) or the copy bundled with the package.

    Loaded as CLIPTokenizerFast directly: AutoTokenizer on a SegVol snapshot would ask whether to run the
    snapshot's custom code.
    """
    folder = Path(folder) if folder is not None else BUNDLED_TOKENIZER
    return CLIPTokenizerFast.from_pretrained(str(folder), local_files_only=True)


class TextEncoder(nn.Module):
    """Category name -> (768,) embedding, as SegVol's `TextEncoder`, cached per name.

    The official code builds `CLIPTextModel(CLIPTextConfig())`: the transformers defaults (ViT-B/32 text
    tower, quick_gelu, 77 positions) with weights from the SegVol checkpoint. Eager attention reproduces
    the official numbers exactly (SDPA differs by ~1e-6); the tower costs ~1 GFLOP, so speed is moot.
    """

    def __init__(self, tokenizer: CLIPTokenizerFast | None = None) -> None:
        super().__init__()
        self.clip_text_model = CLIPTextModel(CLIPTextConfig(attn_implementation="eager"))
        self.dim_align = nn.Linear(512, 768)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer()
        self._cache: dict[str, torch.Tensor] = {}

    def tokenize(self, names: list[str]) -> dict[str, torch.Tensor]:
        """Official tokenisation: template, pad to the longest text, no truncation."""
        tokens = self.tokenizer([PROMPT_TEMPLATE.format(name) for name in names], padding=True, return_tensors="pt")
        length = tokens["input_ids"].shape[1]
        if length > MAX_TOKENS:
            longest = max(names, key=len)
            raise InputError(
                f"text prompt {longest[:60]!r} is too long ({length} tokens with the template, "
                f"at most {MAX_TOKENS}): use a shorter anatomy name"
            )
        return tokens

    @torch.no_grad()
    def encode_batch(self, names: list[str]) -> torch.Tensor:
        """(B,768) for the names, tokenised together with padding as the official forward does; uncached."""
        device = self.dim_align.weight.device
        tokens = {key: value.to(device) for key, value in self.tokenize(names).items()}
        pooled = self.clip_text_model(**tokens).pooler_output  # final-norm state at the first EOS id
        return self.dim_align(pooled)

    def forward(self, names: list[str]) -> torch.Tensor:
        """(B,768); each name encoded alone (as in a batch of one, the official per-window call) and cached."""
        missing = [name for name in dict.fromkeys(names) if name not in self._cache]
        for name in missing:
            self._cache[name] = self.encode_batch([name])[0]
        return torch.stack([self._cache[name] for name in names])

    def _apply(self, fn, recurse=True):
        self._cache.clear()  # cached embeddings live on the old device / dtype
        return super()._apply(fn, recurse)
