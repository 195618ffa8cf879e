"""A least-recently-used tensor cache with a memory budget (image, window and text embeddings)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch


def tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.element_size() * tensor.nelement()


class EmbeddingCache:
    """Keeps tensors until their total size exceeds `budget_mb`, then drops the least recently used.

    A tensor larger than the whole budget is returned but not kept.
    """

    def __init__(self, budget_mb: float = 1024):
        self.budget_bytes = int(budget_mb * 2**20)
        self._entries: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self.bytes = 0

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> torch.Tensor | None:
        if key not in self._entries:
            return None
        self._entries.move_to_end(key)
        return self._entries[key]

    def put(self, key: Hashable, value: torch.Tensor) -> torch.Tensor:
        size = tensor_bytes(value)
        if key in self._entries:
            self.bytes -= tensor_bytes(self._entries.pop(key))
        if size <= self.budget_bytes:
            self._entries[key] = value
            self.bytes += size
            while self.bytes > self.budget_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= tensor_bytes(evicted)
        return value

    def get_or_compute(self, key: Hashable, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        cached = self.get(key)
        return cached if cached is not None else self.put(key, compute())
