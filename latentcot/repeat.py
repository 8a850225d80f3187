"""Apply a layer several times within one forward, each application with its own KV-cache slot.

Attention modules write to the cache at their own ``layer_idx``. A layer applied twice (a looped
block, or a repeated range of a pretrained model) must not overwrite its first application's
keys and values, so each application sees the cache through a :class:`CacheSlot` that writes at
the application's position in the unrolled depth.

``repeat_layers(model, start, end, repeats)`` turns any HF causal LM whose decoder layers form
one list (GPT-2, Llama, Qwen2, Mistral, ...) into its deeper unrolled version at inference time:
layers ``start..end-1`` are applied ``repeats`` times in a row, sharing their weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import Cache
from transformers.cache_utils import DynamicLayer

from latentcot.errors import InputError

LAYER_LIST_PATHS = ("model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers", "transformer.blocks")


class CacheSlot:
    """A cache seen by one layer application: ``update`` writes at ``index`` whatever layer index
    the attention module asks for; everything else is the shared cache's."""

    def __init__(self, cache: Cache, index: int):
        self.cache, self.index = cache, index

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        return self.cache.update(key_states, value_states, self.index, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cache, name)


def ensure_cache_depth(cache: Cache | None, depth: int) -> None:
    """Give ``cache`` at least ``depth`` layers: a cache built from the config holds exactly the
    configured depth, but decoding may unroll deeper (more loops than trained)."""
    if cache is None:
        return
    while len(cache.layers) < depth:
        cache.layers.append(DynamicLayer())


def slotted(value: Any, index: int) -> Any:
    return CacheSlot(value, index) if isinstance(value, (Cache, CacheSlot)) else value


class RepeatedLayer(nn.Module):
    """One application of a (possibly shared) decoder layer at depth ``index`` of the unrolled stack."""

    def __init__(self, layer: nn.Module, index: int):
        super().__init__()
        self.layer, self.index = layer, index

    def forward(self, *args, **kwargs):
        # the cache may come positionally (GPT-2) or by keyword (Llama, Qwen2)
        args = tuple(slotted(a, self.index) for a in args)
        kwargs = {k: slotted(v, self.index) for k, v in kwargs.items()}
        return self.layer(*args, **kwargs)


def _layer_list(model) -> tuple[nn.Module, str, nn.ModuleList]:
    """(owner module, attribute name, the decoder layer list) of an HF causal LM."""
    for path in LAYER_LIST_PATHS:
        owner, parts = model, path.split(".")
        for part in parts[:-1]:
            owner = getattr(owner, part, None)
            if owner is None:
                break
        layers = getattr(owner, parts[-1], None) if owner is not None else None
        if isinstance(layers, nn.ModuleList):
            return owner, parts[-1], layers
    raise InputError(f"cannot repeat layers of a {type(model).__name__}: no decoder layer list found")


def parse_range(spec: str) -> tuple[int, int]:
    """``"2:4"`` -> (2, 4): layers 2 and 3 (end exclusive, as a Python slice)."""
    start, colon, end = spec.partition(":")
    try:
        if not colon:
            raise ValueError
        return int(start), int(end)
    except ValueError:
        raise InputError(f"bad layer range {spec!r}; expected START:END, e.g. 2:4 (END exclusive)") from None


def repeat_layers(model, start: int, end: int, repeats: int):
    """Apply layers ``start..end-1`` of ``model`` ``repeats`` times in a row (in place; returns it).

    The layer list becomes layers[:start] + layers[start:end] * repeats + layers[end:], the repeated
    entries being references to the same modules, and ``num_hidden_layers`` (and ``layer_types``)
    grow to match so a cache built from the config has one slot per application.
    """
    owner, name, layers = _layer_list(model)
    depth = len(layers)
    if not (isinstance(repeats, int) and repeats >= 1):
        raise InputError(f"repeats must be an integer >= 1, got {repeats!r}")
    if not 0 <= start < end <= depth:
        raise InputError(
            f"bad layer range {start}:{end} for a model of {depth} layers; need 0 <= START < END <= {depth}"
        )
    if repeats == 1:
        return model
    inner = [getattr(layer, "layer", layer) for layer in layers]  # unwrap a previous repeat
    order = list(range(start)) + list(range(start, end)) * repeats + list(range(end, depth))
    setattr(owner, name, nn.ModuleList(RepeatedLayer(inner[i], slot) for slot, i in enumerate(order)))
    config = model.config
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[i] for i in order]
    config.num_hidden_layers = len(order)
    return model
