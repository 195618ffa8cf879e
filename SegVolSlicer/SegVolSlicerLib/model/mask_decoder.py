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
        directions = [self.output_hypernetworks_mlps[0](mask_token)]  # (B,96)
        if text_embedding is not None:
            # The text also acts as a per-voxel similarity map added to the mask (official).
            directions.append(self.txt_align_upscaled_embedding(text_embedding).expand(batch, -1))
        return self.project_upscaled(src, torch.stack(directions, dim=-1))

    def _upscaling_weights(self) -> tuple[torch.Tensor, ...]:
        """The upscaling stack's tensors in the token-major layout of `project_upscaled`, rebuilt only when
        a parameter changed (loaded, moved, cast)."""
        up1, norm, _, up2, _ = self.output_upscaling
        params = (up1.weight, up1.bias, norm.weight, norm.bias, up2.weight, up2.bias)
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
        if getattr(self, "_upscaling_key", None) != key:
            channels, grid = up1.weight.shape[1], EMBEDDING_GRID

            def token_major(affine):  # (C, 2d+i, 2h+j, 2w+k) -> (d h w, C i j k)
                blocks = affine.reshape(channels, grid[0], 2, grid[1], 2, grid[2], 2)
                return blocks.permute(1, 3, 5, 0, 2, 4, 6).reshape(grid[0] * grid[1] * grid[2], channels * 8)

            # Second up-convolution's outputs ordered (p q r, C) so that each output voxel's 96 channels
            # are contiguous for the projection.
            out2 = up2.weight.shape[1]
            weight2 = up2.weight.reshape(channels, out2, 8).transpose(1, 2).reshape(channels, 8 * out2)
            self._upscaling = (
                up1.weight.reshape(up1.weight.shape[0], channels * 8),
                up1.bias.repeat_interleave(8),
                token_major(norm.weight),
                token_major(norm.bias),
                weight2,
                up2.bias.repeat(8),
            )
            self._upscaling_key = key
        return self._upscaling

    def project_upscaled(self, src: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
        """output_upscaling on the image tokens, then each voxel's 96 features dotted with `directions`
        (B,96,n) and the n products summed: (B,1,32,64,64) mask logits.

        Same arithmetic as the official ConvTranspose3d -> LayerNorm -> GELU -> ConvTranspose3d -> GELU ->
        matmul (up to summation order): a stride-2 kernel-2 transposed convolution is one matrix product per
        input voxel, so the features stay token-major ((d h w), then the sub-voxel offsets) and the
        (B,96,32,64,64) volume is never laid out; only the final (B,32,64,64) logits are.
        """
        weight1, bias1, norm_weight, norm_bias, weight2, bias2 = self._upscaling_weights()
        b, tokens = src.shape[:2]
        channels = weight1.shape[1] // 8
        x = torch.addmm(bias1, src.reshape(b * tokens, -1), weight1).reshape(b, tokens, channels * 8)
        x = F.gelu(F.layer_norm(x, (tokens, channels * 8), norm_weight, norm_bias, eps=1e-5))
        # (B, d h w, C, i j k) -> rows (d h w i j k), one per voxel of the 16x32x32 grid
        x = x.reshape(b, tokens, channels, 8).transpose(2, 3).reshape(b * tokens * 8, channels)
        features = F.gelu(torch.addmm(bias2, x, weight2))  # rows (d h w i j k), columns (p q r, 96)
        out = features.reshape(b, tokens * 64, -1) @ directions  # (B, d h w i j k p q r, n)
        logits = out.sum(-1) if out.shape[-1] > 1 else out[..., 0]
        d, h, w = EMBEDDING_GRID
        logits = logits.reshape(b, d, h, w, 2, 2, 2, 2, 2, 2).permute(0, 1, 4, 7, 2, 5, 8, 3, 6, 9)
        return logits.reshape(b, 1, 4 * d, 4 * h, 4 * w)
