"""Mask decoder: two-way transformer, 3-D upscaling, hypernetwork mask and the text similarity term."""

import torch
import torch.nn.functional as F
from torch import nn

from .image_encoder import EMBED_DIM, EMBEDDING_GRID
from .transformer import TwoWayTransformer

NUM_MASK_TOKENS = 4  # 1 + num_multimask_outputs (3); only mask 0 is ever used


class MLP(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


class MaskDecoder3D(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.transformer = TwoWayTransformer()
        self.iou_token = nn.Embedding(1, EMBED_DIM)
        self.mask_tokens = nn.Embedding(NUM_MASK_TOKENS, EMBED_DIM)
        upscaled_grid = tuple(2 * n for n in EMBEDDING_GRID)  # (16, 32, 32)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose3d(EMBED_DIM, EMBED_DIM // 4, kernel_size=2, stride=2),
            # Normalises over channels AND voxels jointly, with a per-voxel affine: this ties the model to
            # the 32x256x256 window. Official; kept.
            nn.LayerNorm((EMBED_DIM // 4, *upscaled_grid)),
            nn.GELU(),
            nn.ConvTranspose3d(EMBED_DIM // 4, EMBED_DIM // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        # Mask tokens 1-3 and the IoU head never reached the training loss (single-mask output); their
        # tensors are loaded but not computed.
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(EMBED_DIM, EMBED_DIM, EMBED_DIM // 8, 3) for _ in range(NUM_MASK_TOKENS)
        )
        self.iou_prediction_head = MLP(EMBED_DIM, 256, NUM_MASK_TOKENS, 3)
        self.txt_align_upscaled_embedding = nn.Linear(EMBED_DIM, EMBED_DIM // 8)

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        text_embedding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """image_embedding (B or 1,768,8,16,16), sparse (B,N,768), dense (B,768,8,16,16) -> (B,1,32,64,64)."""
        batch = sparse.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse], dim=1)
        if image_embedding.shape[0] != batch:  # one image, several prompt sets
            image_embedding = image_embedding.repeat_interleave(batch, dim=0)
        src = image_embedding + dense
        pos = image_pe.expand(batch, -1, -1, -1, -1)

        tokens, src = self.transformer(src, pos, tokens)
        mask_token = tokens[:, 1]
        b, c = src.shape[0], src.shape[2]
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, *EMBEDDING_GRID))
        upscaled = upscaled.flatten(2)  # (B, 96, 32*64*64)

        hyper = self.output_hypernetworks_mlps[0](mask_token).unsqueeze(1)  # (B,1,96)
        masks = hyper @ upscaled
        if text_embedding is not None:
            # The text also acts as a per-voxel similarity map added to the mask (official).
            masks = masks + self.txt_align_upscaled_embedding(text_embedding).unsqueeze(1) @ upscaled
        return masks.reshape(b, 1, *(4 * n for n in EMBEDDING_GRID))
