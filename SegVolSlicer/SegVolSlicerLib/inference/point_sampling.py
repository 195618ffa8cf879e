"""The official `select_points` draw: clicks sampled from a binary map (zoom-in windows, evaluation).

Official algorithm: one random voxel of the map (> 0.9) as a positive click, then `num_positive_extra`
positives and `num_negative_extra` negatives (< 0.1) from random permutations (so duplicates of the first
click are possible), padded with ignore points (-1, -1, -1; label -1) up to 1 + extras; a map with no
positive voxel gives a single ignore point. The official code draws from torch's global generator, so its
zoom-in is not reproducible; SegVolSlicer passes a seeded generator instead (same calls, same order: with
seed s it reproduces the official run after `torch.manual_seed(s)` for one target), or None for the
official unseeded behaviour.
"""

from __future__ import annotations

import torch

POSITIVE_THRESHOLD, NEGATIVE_THRESHOLD = 0.9, 0.1
IGNORE = -1


def select_points(
    binary_map: torch.Tensor,
    generator: torch.Generator | None,
    num_positive_extra: int = 4,
    num_negative_extra: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """binary_map (any shape, (d,h,w) here) -> coords (N,3) float32, labels (N,) float32."""
    positive = torch.nonzero(binary_map > POSITIVE_THRESHOLD)  # C order, as the official as_tuple indices
    negative = torch.nonzero(binary_map < NEGATIVE_THRESHOLD) if num_negative_extra > 0 else None
    return draw_points(positive, negative, generator, num_positive_extra, num_negative_extra)


def draw_points(
    positive: torch.Tensor,
    negative: torch.Tensor | None,
    generator: torch.Generator | None,
    num_positive_extra: int = 4,
    num_negative_extra: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`select_points` on the map's positive (and negative) voxels (M,3) long, in C order: the zoom-in
    passes its few clicked voxels without laying out a 32x256x256 map."""
    coords, labels = [], []
    if len(positive) == 0:
        num_positive_extra = 0
        coords.append(torch.full((1, 3), IGNORE, dtype=torch.long))
        labels.append(torch.full((1,), IGNORE, dtype=torch.float32))
    else:
        first = torch.randint(len(positive), (1,), generator=generator)
        coords.append(positive[first])
        labels.append(torch.ones(1))
    if num_positive_extra > 0:
        extra = positive[torch.randperm(len(positive), generator=generator)[:num_positive_extra]]
        coords.append(extra)
        labels.append(torch.ones(len(extra)))
    if num_negative_extra > 0:
        extra = negative[torch.randperm(len(negative), generator=generator)[:num_negative_extra]]
        coords.append(extra)
        labels.append(torch.zeros(len(extra)))
    missing = num_positive_extra + num_negative_extra + 1 - sum(len(x) for x in labels)
    if missing > 0:
        coords.append(torch.full((missing, 3), IGNORE, dtype=torch.long))
        labels.append(torch.full((missing,), IGNORE, dtype=torch.float32))
    return torch.cat(coords).float(), torch.cat(labels).float()


def make_generator(seed: int | None) -> torch.Generator | None:
    """A generator seeded with `seed`, or None (torch's global generator, the official behaviour)."""
    return None if seed is None else torch.Generator().manual_seed(int(seed))
