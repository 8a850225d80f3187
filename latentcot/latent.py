"""Latent modes build the continuous vector fed back on a latent step.

A latent mode is a one-method callable ``latent(view, table) -> Tensor (B, D)``, in the dtype of
the embedding table, computed for the whole batch (the engine picks rows with ``where``).
"""

from __future__ import annotations

from typing import Protocol

import torch

from latentcot.config import LatentConfig
from latentcot.types import EmbeddingTable, StepView


class LatentMode(Protocol):
    def __call__(self, view: StepView, table: EmbeddingTable) -> torch.Tensor: ...  # (B, D)


class HiddenLatent:
    """COCONUT: the raw final-layer hidden state at the last position."""

    def __call__(self, view: StepView, table: EmbeddingTable) -> torch.Tensor:
        return view.hidden.to(table.weight.dtype)


class NormedHiddenLatent:
    """The hidden state rescaled to the mean input-embedding norm.

    Final hidden states are often several times longer than token embeddings; this keeps the
    direction and puts the vector on the scale the input layer was trained on.
    """

    def __call__(self, view: StepView, table: EmbeddingTable) -> torch.Tensor:
        hidden = view.hidden.float()  # (B, D)
        scale = table.mean_norm / hidden.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        return (hidden * scale).to(table.weight.dtype)


def _mix(weights: torch.Tensor, table: EmbeddingTable) -> torch.Tensor:
    """weights (B, V) @ E (V, D); the logits' vocabulary may be padded past the embedding rows."""
    vocab = min(weights.shape[-1], table.weight.shape[0])
    return weights[:, :vocab].to(table.weight.dtype) @ table.weight[:vocab]  # (B, D)


class SoftLatent:
    """Soft thinking: the expected token embedding under softmax(logits / temperature)."""

    def __init__(self, temperature: float = 1.0):
        self.temperature = temperature

    def __call__(self, view: StepView, table: EmbeddingTable) -> torch.Tensor:
        return _mix(torch.softmax(view.logits / self.temperature, dim=-1), table)


class TopKSoftLatent:
    """The expected embedding over the k most likely tokens only, renormalised."""

    def __init__(self, k: int = 8, temperature: float = 1.0):
        self.k = k
        self.temperature = temperature

    def __call__(self, view: StepView, table: EmbeddingTable) -> torch.Tensor:
        logits = view.logits[:, : table.weight.shape[0]]  # drop padded vocab
        top_logits, top_ids = logits.topk(min(self.k, logits.shape[-1]), dim=-1)  # (B, k)
        weights = torch.softmax(top_logits / self.temperature, dim=-1)  # (B, k)
        rows = table.weight[top_ids]  # (B, k, D)
        return torch.einsum("bk,bkd->bd", weights.to(rows.dtype), rows)


def make_latent(cfg: LatentConfig) -> LatentMode:
    if cfg.kind == "hidden":
        return HiddenLatent()
    if cfg.kind == "hidden-normed":
        return NormedHiddenLatent()
    if cfg.kind == "soft":
        return SoftLatent(cfg.temperature)
    return TopKSoftLatent(cfg.top_k, cfg.temperature)
