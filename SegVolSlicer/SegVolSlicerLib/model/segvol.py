"""SegVol: image encoder + prompt encoder + mask decoder + text encoder, with separable stages.

The official model runs everything in one call; here the prompt-independent image embedding and the
per-string text embedding are separate stages so that inference sessions can cache them and rerun only
the decoder after a click.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..runtime import resolve_precision
from .image_encoder import WINDOW_SIZE, ImageEncoderViT3D
from .mask_decoder import MaskDecoder3D
from .prompt_encoder import PromptEncoder3D
from .text_encoder import TextEncoder

Points = tuple[torch.Tensor, torch.Tensor]  # coords (B,N,3) as (d,h,w) voxels, labels (B,N): 1 / 0 / -1
# Compute precision of the image encoder (97 % of the FLOPs). The decoder always runs in fp32: in bf16 its
# errors pass through the zoom-out mask into the zoom-in prompts (Dice 0.985 vs fp32 on the synthetic CT,
# against 0.999 with a bf16 encoder only). Which precision "auto" means is runtime.default_precision.
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _require_a_prompt(*prompts) -> None:
    if all(prompt is None for prompt in prompts):
        raise InputError("no prompt given: SegVol needs at least one text, box or point prompt")


class SegVol(nn.Module):
    def __init__(self, tokenizer=None) -> None:
        super().__init__()
        self.image_encoder = ImageEncoderViT3D()
        self.mask_decoder = MaskDecoder3D()
        self.prompt_encoder = PromptEncoder3D()
        self.text_encoder = TextEncoder(tokenizer)
        self.precision = "fp32"

    def set_precision(self, precision: str) -> None:
        """ "fp32", "bf16" or "fp16" autocast for encode_image ("auto": runtime.default_precision)."""
        self.precision = resolve_precision(precision, self.device)

    def _autocast(self):
        dtype = AUTOCAST_DTYPES[self.precision]
        return torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    @property
    def device(self) -> torch.device:
        return self.mask_decoder.iou_token.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.mask_decoder.iou_token.weight.dtype

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B,1,32,256,256) in [0,1] -> image embedding (B,768,8,16,16)."""
        if image.ndim != 5 or tuple(image.shape[1:]) != (1, *WINDOW_SIZE):
            raise InputError(
                f"model input must have shape (B,1,{','.join(map(str, WINDOW_SIZE))}), got {tuple(image.shape)}"
            )
        with self._autocast():
            return self.image_encoder(image.to(self.device, self.dtype))

    def encode_text(self, names: list[str] | str) -> torch.Tensor:
        """Category names -> (B,768), cached per string."""
        return self.text_encoder([names] if isinstance(names, str) else list(names))

    @torch.no_grad()
    def decode(
        self,
        image_embedding: torch.Tensor,
        text_embedding: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        points: Points | None = None,
        upsample: bool = True,
    ) -> torch.Tensor:
        """Prompts on an image embedding -> logits (B,1,32,256,256), or (B,1,32,64,64) if not upsample.

        boxes (B,6) or (B,1,6) = (d0,h0,w0,d1,h1,w1) inclusive voxel indices of the window.
        """
        _require_a_prompt(text_embedding, boxes, points)
        device = self.device
        if boxes is not None:
            boxes = torch.as_tensor(boxes, device=device)
            if boxes.shape[-1] != 6:
                raise InputError(f"boxes must be (B,6) as (d0,h0,w0,d1,h1,w1), got {tuple(boxes.shape)}")
            boxes = boxes.reshape(-1, 1, 6)
        if points is not None:
            coords, labels = (torch.as_tensor(x, device=device) for x in points)
            if coords.ndim != 3 or coords.shape[-1] != 3 or labels.shape != coords.shape[:2]:
                raise InputError(
                    f"points must be coords (B,N,3) and labels (B,N), got "
                    f"{tuple(coords.shape)} and {tuple(labels.shape)}"
                )
            points = (coords, labels)
        if text_embedding is not None:
            text_embedding = text_embedding.to(device)
        with torch.autocast(device.type, enabled=False):  # fp32 even inside a caller's autocast
            sparse, dense = self.prompt_encoder(points, boxes, text_embedding)
            low_res = self.mask_decoder(
                image_embedding.to(device, torch.float32),
                self.prompt_encoder.get_dense_pe(),
                sparse,
                dense,
                text_embedding,
            )
        if not upsample:
            return low_res
        return F.interpolate(low_res, size=WINDOW_SIZE, mode="trilinear", align_corners=False)

    def forward(
        self,
        image: torch.Tensor,
        text: list[str] | str | None = None,
        boxes: torch.Tensor | None = None,
        points: Points | None = None,
    ) -> torch.Tensor:
        """The official call: image (B,1,32,256,256) + prompts -> logits (B,1,32,256,256)."""
        _require_a_prompt(text, boxes, points)  # before the expensive encoder pass
        text_embedding = self.encode_text(text) if text is not None else None
        return self.decode(self.encode_image(image), text_embedding, boxes, points)
