"""Gates decide, per row and per step, whether the next input is a latent (True) or a token (False).

A gate is a one-method callable ``gate(view) -> BoolTensor (B,)``. Gates hold no state between
calls: the per-row counters they need (latent steps so far, current latent run) come in the
``StepView``, kept by the engine.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

from latentcot.config import GateConfig
from latentcot.types import StepView


class Gate(Protocol):
    def __call__(self, view: StepView) -> torch.Tensor: ...  # (B,) bool, True = latent step


class TokenGate:
    """Ordinary chain of thought: never latent."""

    def __call__(self, view: StepView) -> torch.Tensor:
        return torch.zeros_like(view.active)


class LatentGate:
    """Always latent: every step feeds the latent vector back."""

    def __call__(self, view: StepView) -> torch.Tensor:
        return torch.ones_like(view.active)


class FixedGate:
    """COCONUT decoding: the first ``k`` steps of each row are latent, then tokens."""

    def __init__(self, k: int):
        self.k = k

    def __call__(self, view: StepView) -> torch.Tensor:
        return view.n_latent < self.k


def entropy_in_unit(entropy_nats: torch.Tensor, unit: str, vocab_size: int) -> torch.Tensor:
    """Convert entropies in nats to ``unit``: nats, bits, or normalized (H / log V, in [0, 1])."""
    if unit == "nats":
        return entropy_nats
    if unit == "bits":
        return entropy_nats / math.log(2)
    if unit == "normalized":
        return entropy_nats / math.log(vocab_size)
    raise ValueError(f"unknown entropy unit {unit!r}")


class EntropyGate:
    """Latent when the next-token entropy is high (H > threshold): sampling would discard the most.

    Caps, when set, force a token step: after ``max_consecutive`` latent steps in a row, and for
    good once a row has taken ``max_latent`` latent steps.
    """

    def __init__(
        self, threshold: float, unit: str = "nats", max_consecutive: int | None = None, max_latent: int | None = None
    ):
        self.threshold = threshold
        self.unit = unit
        self.max_consecutive = max_consecutive
        self.max_latent = max_latent

    def __call__(self, view: StepView) -> torch.Tensor:
        entropy = entropy_in_unit(view.entropy, self.unit, view.logits.shape[-1])
        latent = entropy > self.threshold
        if self.max_consecutive is not None:
            latent &= view.latent_run < self.max_consecutive
        if self.max_latent is not None:
            latent &= view.n_latent < self.max_latent
        return latent


def make_gate(cfg: GateConfig) -> Gate:
    if cfg.kind == "token":
        return TokenGate()
    if cfg.kind == "latent":
        return LatentGate()
    if cfg.kind == "fixed":
        return FixedGate(cfg.k)
    return EntropyGate(cfg.threshold, cfg.unit, cfg.max_consecutive, cfg.max_latent)
