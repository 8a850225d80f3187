"""A KV cache that writes into buffers sized once for the whole generation.

transformers' DynamicCache concatenates every step, copying the whole cache (O(T) per step,
O(T^2) per sequence). The engine knows the final length up front (prompt + max_new_tokens), so
each full-attention layer allocates its buffers once and hands attention a view of the filled
part. Sliding-window and other special layers keep their own implementation.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """A DynamicLayer whose keys/values are views into buffers of fixed capacity (grown if exceeded)."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self._key_buffer = self._allocate(key_states, self.capacity)  # (B, H, capacity, Dh)
        self._value_buffer = self._allocate(value_states, self.capacity)
        self._expose()
        self.is_initialized = True

    @staticmethod
    def _allocate(like: torch.Tensor, capacity: int) -> torch.Tensor:
        return like.new_empty((*like.shape[:-2], capacity, like.shape[-1]))

    def _expose(self) -> None:
        self.keys = self._key_buffer[..., : self.length, :]
        self.values = self._value_buffer[..., : self.length, :]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:  # never in the engine; keeps the layer correct for any caller
            self.capacity = max(end, 2 * self.capacity)
            for name in ("_key_buffer", "_value_buffer"):
                grown = self._allocate(getattr(self, name), self.capacity)
                grown[..., : self.length, :] = getattr(self, name)[..., : self.length, :]
                setattr(self, name, grown)
        self._key_buffer[..., self.length : end, :] = key_states
        self._value_buffer[..., self.length : end, :] = value_states
        self.length = end
        self._expose()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def crop(self, tokens_to_remove: int) -> None:
        """DynamicLayer's contract: negative = forget that many last positions; positive (legacy) = keep
        that many. The buffers stay; the next update overwrites the forgotten slots."""
        keep = self.length + tokens_to_remove if tokens_to_remove <= 0 else min(self.length, tokens_to_remove)
        self.length = max(0, keep)
        if self.is_initialized:
            self._expose()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep (or repeat) the batch rows ``indices``: the decode tree forks rows this way."""
        if self.is_initialized:
            self._key_buffer = self._key_buffer[indices]
            self._value_buffer = self._value_buffer[indices]
            self._expose()

    def reset(self) -> None:
        self.length = 0
        super().reset()


def preallocated_cache(config, capacity: int) -> DynamicCache:
    """A DynamicCache for ``config`` whose full-attention layers hold ``capacity`` positions in place."""
    cache = DynamicCache(config=config)
    cache.layers = [PreallocatedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
