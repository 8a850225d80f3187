"""Answer-level information loss: ``--measure rollout[:every=K,max=M,min_entropy=H]``.

At a token step t of a trajectory, a second branch feeds the latent (the setting's own latent mode) in
place of the sampled token and then goes on under the same gate to the end. Does the answer change?
Does correctness? Unlike a per-step divergence, this asks what sampling at t cost the *answer*, which is
the hypothesis under test: that sampling loses information in proportion to entropy.

The branches are *probe arms* of the decode tree (``latentcot.tree``). Probe j of a setting runs the
setting's own gate and follows it exactly — the same rows, so no cost — until the row's j-th
*qualifying* step (a token step t with t % every == 0 and entropy >= min_entropy), where it asks for a
latent instead: the tree forks there, and the branch continues with its own copy of the row's RNG
stream and gate state. So up to ``max`` branches per trajectory, each paying only for the steps after
its fork. Every record then carries, per step, ``rollout_changed`` (the branch's answer differs from
the record's) and ``rollout_correct`` (the branch's answer is correct), None at steps not probed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from latentcot.errors import InputError
from latentcot.tree import select_state
from latentcot.types import StepView
from latentcot.validation import is_int, is_number, require

NAME = "rollout"


@dataclass(frozen=True)
class RolloutSpec:
    every: int = 1  # probe only steps t with t % every == 0
    max: int = 4  # branches per trajectory at most (its first qualifying steps)
    min_entropy: float = 0.0  # probe only steps whose entropy (nats) is at least this

    def __post_init__(self):
        require(is_int(self.every) and self.every >= 1, f"rollout every must be an integer >= 1, got {self.every!r}")
        require(is_int(self.max) and self.max >= 1, f"rollout max must be an integer >= 1, got {self.max!r}")
        require(
            is_number(self.min_entropy) and self.min_entropy >= 0,
            f"rollout min_entropy must be a number >= 0, got {self.min_entropy!r}",
        )


def parse_rollout(measure: tuple[str, ...] | list[str]) -> RolloutSpec | None:
    """The rollout spec among ``--measure`` values (``rollout`` or ``rollout:every=2,max=3,...``), if any."""
    specs = [m for m in measure if m.partition(":")[0] == NAME]
    if not specs:
        return None
    require(len(specs) == 1, "--measure rollout given twice")
    kinds = {"every": int, "max": int, "min_entropy": float}
    values: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in specs[0].partition(":")[2].split(","))):
        key, eq, text = (s.strip() for s in item.partition("="))
        require(bool(eq) and key in kinds, f"bad rollout parameter {item!r}; valid: every=K, max=M, min_entropy=H")
        try:
            values[key] = kinds[key](text)
        except ValueError:
            raise InputError(f"bad value {text!r} for rollout {key}; expected {kinds[key].__name__}") from None
    return RolloutSpec(**values)


@dataclass
class ProbeState:
    inner: Any  # the probed gate's own state (None for stateless gates)
    seen: torch.Tensor  # (B,) long, qualifying steps so far

    def select(self, rows: torch.Tensor) -> ProbeState:
        return ProbeState(select_state(self.inner, rows), self.seen[rows].clone())

    @property
    def marker_weight(self):  # a blend the probed gate asks for (SwiReasoning), or None
        return getattr(self.inner, "marker_weight", None)


class ProbeGate:
    """Probe ``index`` of a setting: its ``gate``, except at the row's index-th qualifying step, where the
    row takes a latent instead."""

    def __init__(self, gate, index: int, spec: RolloutSpec):
        self.gate, self.index, self.spec = gate, index, spec
        self.blends_markers = getattr(gate, "blends_markers", False)

    def start(self, batch: int, device) -> ProbeState:
        return ProbeState(self.gate.start(batch, device), torch.zeros(batch, dtype=torch.long, device=device))

    def __call__(self, view: StepView, state: ProbeState) -> torch.Tensor:
        wish = self.gate(view, state.inner)  # (B,) what the probed setting does here
        qualifies = ~wish & view.active & (view.entropy >= self.spec.min_entropy) & (view.step % self.spec.every == 0)
        fire = qualifies & (state.seen == self.index)
        state.seen = state.seen + qualifies.long()
        return wish | fire


def fork_step(main_modes: list[str], probe_modes: list[str]) -> int | None:
    """The step where a probe left its trajectory (a token step the probe took as a latent), or None."""
    for t, (a, b) in enumerate(zip(main_modes, probe_modes)):
        if a != b:
            return t
    return None
