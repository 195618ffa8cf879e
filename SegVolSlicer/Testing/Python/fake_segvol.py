"""A tiny stand-in for the SegVol network, for fast tests of the engine's plumbing (not of the model).

It honours the model contract (encode_image, encode_text, decode, device, dtype) and its output depends on
the prompts and on the image where a real model's would: the "embedding" is a 4x-down-sampled copy of the
window, the logits say "bright voxels", shifted by the text, raised inside the box and around positive
clicks, lowered around negative ones. It counts encoder calls so tests can check the caches.
"""

from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F

WINDOW = (32, 256, 256)
GRID = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in WINDOW), indexing="ij"))


class FakeSegVol:
    def __init__(self, threshold: float = 0.5):
        self.threshold = threshold
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.image_calls = 0  # encoder passes
        self.images_encoded = 0  # windows encoded (a batch counts each)
        self.text_calls = 0
        self.decode_calls = []  # (boxes, points) of every decode

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        assert tuple(image.shape[1:]) == (1, *WINDOW), image.shape
        self.image_calls += 1
        self.images_encoded += image.shape[0]
        return F.avg_pool3d(image.float(), 4)  # (B, 1, 8, 64, 64)

    def encode_text(self, names) -> torch.Tensor:
        self.text_calls += 1
        names = [names] if isinstance(names, str) else list(names)
        shifts = [(zlib.crc32(n.encode()) % 100) / 1000.0 for n in names]
        return torch.tensor(shifts, dtype=torch.float32)[:, None].expand(-1, 768).clone()

    def decode(self, image_embedding, text_embedding=None, boxes=None, points=None, upsample=True):
        assert text_embedding is not None or boxes is not None or points is not None
        self.decode_calls.append((None if boxes is None else boxes.clone(),
                                  None if points is None else (points[0].clone(), points[1].clone())))
        logits = F.interpolate(image_embedding, size=WINDOW, mode="nearest") - self.threshold
        if text_embedding is not None:
            logits = logits + text_embedding[:, :1, None, None, None]
        grid = GRID
        if boxes is not None:
            box = boxes.reshape(-1, 6)[0]
            if box[0] >= 0:
                inside = torch.ones(WINDOW, dtype=torch.bool)
                for axis in range(3):
                    inside &= (grid[axis] >= box[axis]) & (grid[axis] <= box[axis + 3])
                logits = logits + torch.where(inside, 0.3, -1.0)
        if points is not None:
            coords, labels = points
            for coord, label in zip(coords.reshape(-1, 3), labels.reshape(-1)):
                if label < 0:
                    continue
                near = ((grid - coord[:, None, None, None]) ** 2).sum(0) < 8 ** 2
                logits = logits + torch.where(near, 1.0 if label > 0 else -1.0, 0.0)
        if not upsample:
            return F.interpolate(logits, size=(32, 64, 64), mode="nearest")
        return logits
