"""3-D SAM-style prompt encoder: points, box corners and text become sparse tokens."""

import math

import torch
from torch import nn

from .image_encoder import EMBED_DIM, EMBEDDING_GRID, WINDOW_SIZE


class PositionEmbeddingRandom3D(nn.Module):
    """Random Fourier features of 3-D coordinates; the (3, 384) Gaussian matrix comes from the checkpoint."""

    def __init__(self, num_pos_feats: int = EMBED_DIM // 2) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(3, num_pos_feats))

    def _encode(self, coords: torch.Tensor) -> torch.Tensor:
        # coords (..., 3) in [0,1] -> (..., 768) = [sin, cos]
        projected = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        projected = 2 * math.pi * projected
        return torch.cat([torch.sin(projected), torch.cos(projected)], dim=-1)

    def dense(self, grid: tuple[int, int, int] = EMBEDDING_GRID) -> torch.Tensor:
        """PE of every cell centre of the (8,16,16) token grid -> (1,768,8,16,16).

        The official grid feeds the PE the 3-vector (axis-1, axis-0, axis-2) positions, i.e. (H, D, W):
        a 2-D SAM (x, y) leftover the model was trained with; kept.
        """
        device = self.positional_encoding_gaussian_matrix.device
        centres = [(torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n for n in grid]
        d, h, w = torch.meshgrid(*centres, indexing="ij")
        return self._encode(torch.stack([h, d, w], dim=-1)).permute(3, 0, 1, 2).unsqueeze(0)

    def at_voxels(self, coords: torch.Tensor) -> torch.Tensor:
        """PE of voxel coordinates (B,N,3) given as (d,h,w) of the 32x256x256 window.

        Official quirk, copied bit for bit: slot 0 is divided by the window's H (256), slot 1 by its D (32)
        and slot 2 by its W (256), so a (d,h,w) point is normalised to (d/256, h/32, w/256).
        """
        size = coords.new_tensor([WINDOW_SIZE[1], WINDOW_SIZE[0], WINDOW_SIZE[2]], dtype=torch.float32)
        return self._encode(coords.float() / size)


class PromptEncoder3D(nn.Module):
    """Sparse tokens [points (+padding point)] [box corner 0, 1] [text]; dense = the learned no-mask embedding.

    The official module also holds a 2-D `mask_downscaling` stack that cannot take 3-D masks and was never
    trained; it is left out (the loader tolerates its tensors).
    """

    def __init__(self) -> None:
        super().__init__()
        self.pe_layer = PositionEmbeddingRandom3D()
        # 0: negative point, 1: positive point, 2: box corner 0, 3: box corner 1
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, EMBED_DIM) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, EMBED_DIM)
        self.no_mask_embed = nn.Embedding(1, EMBED_DIM)

    def get_dense_pe(self) -> torch.Tensor:
        """The dense PE (1,768,8,16,16): the official code recomputes it on every call; it depends on the
        Gaussian matrix alone, so it is computed again only when that matrix changed (loaded, moved)."""
        matrix = self.pe_layer.positional_encoding_gaussian_matrix
        key = (matrix.data_ptr(), matrix._version, matrix.dtype, matrix.device)
        if getattr(self, "_dense_pe_key", None) != key:
            self._dense_pe, self._dense_pe_key = self.pe_layer.dense(), key
        return self._dense_pe

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        coords = coords.float() + 0.5  # voxel centre
        labels = labels.float()
        if pad:  # official: without a box, one ignore point at exactly (0,0,0) is appended after the +0.5
            coords = torch.cat([coords, coords.new_zeros(coords.shape[0], 1, 3)], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), -1.0)], dim=1)
        embedding = self.pe_layer.at_voxels(coords)
        labels = labels.unsqueeze(-1)
        embedding = torch.where(labels == -1, self.not_a_point_embed.weight, embedding)
        embedding = torch.where(labels == 0, embedding + self.point_embeddings[0].weight, embedding)
        return torch.where(labels == 1, embedding + self.point_embeddings[1].weight, embedding)

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        corners = self.pe_layer.at_voxels(boxes.float().reshape(-1, 2, 3) + 0.5)
        return torch.cat(
            [corners[:, :1] + self.point_embeddings[2].weight, corners[:, 1:] + self.point_embeddings[3].weight], dim=1
        )

    def forward(self, points=None, boxes=None, text_embedding=None) -> tuple[torch.Tensor, torch.Tensor]:
        """points: (coords (B,N,3) (d,h,w), labels (B,N)); boxes (B,1,6); text_embedding (B,768).

        Returns sparse (B, n_tokens, 768) and dense (B,768,8,16,16) embeddings.
        """
        tokens = []
        if points is not None:
            tokens.append(self._embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            tokens.append(self._embed_boxes(boxes))
        if text_embedding is not None:
            tokens.append(text_embedding.unsqueeze(1))
        sparse = torch.cat(tokens, dim=1)
        dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1, 1).expand(sparse.shape[0], -1, *EMBEDDING_GRID)
        return sparse, dense
