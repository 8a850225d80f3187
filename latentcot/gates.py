"""Gates decide, per row and per step, whether the next input is a latent (True) or a token (False).

A gate is a callable ``gate(view, state) -> BoolTensor (B,)``. The per-row counters most gates need
(latent steps so far, current latent run) come in the ``StepView``, kept by the engine. A rule that
must remember more across steps (SwiReasoning's reference entropy and dwell counter, Soft Thinking's
run of low-entropy steps) keeps it in an explicit state object: ``gate.start(batch, device)`` creates
it for one ``generate`` call, the engine passes it to every call, and the gate updates it in place.
A state is a dataclass of (B,) tensors (:class:`RowState`), so a row's state can be selected or
copied with the row. Stateless gates return None from ``start``. The gate objects themselves never
change, so one gate serves any number of calls.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol

import torch

from latentcot.config import GateConfig
from latentcot.types import StepView


class Gate(Protocol):
    def start(self, batch: int, device: torch.device | str) -> Any: ...  # per-call state, or None

    def __call__(self, view: StepView, state: Any = None) -> torch.Tensor: ...  # (B,) bool, True = latent step


@dataclasses.dataclass
class RowState:
    """Base of gate states: every field is a tensor whose first dimension is the batch row."""

    def select(self, rows: torch.Tensor) -> RowState:
        """The state of ``rows`` (an index or bool tensor), as a new object (copies)."""
        return type(self)(**{f.name: getattr(self, f.name)[rows].clone() for f in dataclasses.fields(self)})


class StatelessGate:
    """A gate that decides from the view alone."""

    def start(self, batch: int, device: torch.device | str) -> None:
        return None


class TokenGate(StatelessGate):
    """Ordinary chain of thought: never latent."""

    def __call__(self, view: StepView, state: Any = None) -> torch.Tensor:
        return torch.zeros_like(view.active)


class LatentGate(StatelessGate):
    """Always latent: every step feeds the latent vector back."""

    def __call__(self, view: StepView, state: Any = None) -> torch.Tensor:
        return torch.ones_like(view.active)


class FixedGate(StatelessGate):
    """COCONUT decoding: the first ``k`` steps of each row are latent, then tokens."""

    def __init__(self, k: int):
        self.k = k

    def __call__(self, view: StepView, state: Any = None) -> torch.Tensor:
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


class EntropyGate(StatelessGate):
    """This project's rule: latent when the next-token entropy is high (H > threshold), where sampling
    would discard the most; ``direction="below"`` flips it (latent when H < threshold).

    Caps, when set, force a token step: after ``max_consecutive`` latent steps in a row, and for
    good once a row has taken ``max_latent`` latent steps.
    """

    def __init__(
        self,
        threshold: float,
        unit: str = "nats",
        max_consecutive: int | None = None,
        max_latent: int | None = None,
        direction: str = "above",
    ):
        self.threshold = threshold
        self.unit = unit
        self.max_consecutive = max_consecutive
        self.max_latent = max_latent
        self.direction = direction

    def __call__(self, view: StepView, state: Any = None) -> torch.Tensor:
        entropy = entropy_in_unit(view.entropy, self.unit, view.logits.shape[-1])
        latent = entropy > self.threshold if self.direction == "above" else entropy < self.threshold
        if self.max_consecutive is not None:
            latent &= view.latent_run < self.max_consecutive
        if self.max_latent is not None:
            latent &= view.n_latent < self.max_latent
        return latent


class ThinkRouterGate(StatelessGate):
    """ThinkRouter (Xu et al., 2026, "ThinkRouter: Efficient Reasoning via Routing Thinking between
    Latent and Discrete Spaces"): route a step to the discrete token space when the model is unsure,
    p_max < ``threshold``, and to the latent (soft) space otherwise. p_max is the largest probability of
    softmax(logits) at temperature 1. The paper picks the threshold on a validation set: sweep it."""

    def __init__(self, threshold: float):
        self.threshold = threshold

    def __call__(self, view: StepView, state: Any = None) -> torch.Tensor:
        p_max = torch.softmax(view.logits.float(), dim=-1).amax(dim=-1)  # (B,)
        return p_max >= self.threshold


@dataclasses.dataclass
class SwitchState(RowState):
    latent: torch.Tensor  # (B,) bool, the row's current mode
    reference: torch.Tensor  # (B,) fp32, entropy at the row's last switch (at step 0 first)
    stay: torch.Tensor  # (B,) long, steps since the last switch
    switches: torch.Tensor  # (B,) long, latent -> token switches so far
    locked: torch.Tensor  # (B,) bool, the row sampled the end-of-thinking marker: tokens for good
    marker_weight: torch.Tensor  # (B, 2) fp32, this step's input blend of the (begin, end) marker embeddings


class SwiReasoningGate:
    """SwiReasoning (Shi et al., 2025, "SwiReasoning: Switch-Thinking in Latent and Explicit for
    Pareto-Superior Reasoning LLMs"), the mode rule of ``generate_swir``: every row starts latent and
    its reference entropy is H at step 0 (softmax at temperature 1, full vocabulary). At each later
    step the dwell counter grows by one; a latent row switches to tokens when H < reference; a token
    row switches back when H > reference and at least ``window`` steps passed since its last switch.
    Every switch resets the counter and makes the current H the reference. After ``max_switches``
    latent -> token switches (None: no limit) the row stays in token mode (the reference code injects
    an answer prompt there instead; a fixed prompt has no place in a task-agnostic harness).

    With thought markers (the model's ``<think>``/``</think>``), as the reference does: a row that
    samples the end marker stays in token mode for good; the input at a switch to latent is
    α·soft + (1 − α)·e(begin), and at a switch to tokens β·soft + (1 − β)·e(end) (a continuous
    input, so that step is latent in the record and emits its sampled token), with
    α = α0 + (1 − α0)·t/T and β = β0 + (1 − β0)·t/T over the step budget T. The gate asks for the
    blend through ``state.marker_weight``; the engine mixes the marker embeddings in. Left out: the
    reference's 0.1 blend of its tokenizer's ``\\n`` token into the first input, and its forcing of
    token mode on math-symbol tokens (both tied to its tokenizer and benchmarks)."""

    blends_markers = True  # markers are mixed into switch inputs, never inserted as steps of their own

    def __init__(self, window: int = 512, max_switches: int | None = None, alpha0: float = 1.0, beta0: float = 0.7):
        self.window = window
        self.max_switches = max_switches
        self.alpha0 = alpha0
        self.beta0 = beta0

    def start(self, batch: int, device: torch.device | str) -> SwitchState:
        zeros = torch.zeros(batch, dtype=torch.long, device=device)
        false = torch.zeros(batch, dtype=torch.bool, device=device)
        weight = torch.zeros(batch, 2, device=device)
        return SwitchState(~false, torch.zeros(batch, device=device), zeros, zeros.clone(), false, weight)

    def __call__(self, view: StepView, state: SwitchState) -> torch.Tensor:
        entropy = view.entropy.float()  # (B,)
        if view.markers is not None and view.sampled is not None:
            state.locked = state.locked | (view.sampled == view.markers[1])
        state.marker_weight = torch.zeros_like(state.marker_weight)
        if view.step == 0:
            state.reference = entropy.clone()
            return state.latent & ~state.locked
        state.stay = state.stay + 1
        to_token = state.latent & (entropy < state.reference)
        to_latent = ~state.latent & (entropy > state.reference) & (state.stay >= self.window) & ~state.locked
        if self.max_switches is not None:
            to_latent &= state.switches < self.max_switches
        switched = to_token | to_latent
        state.latent = (state.latent & ~to_token) | to_latent
        state.stay = torch.where(switched, 0, state.stay)
        state.reference = torch.where(switched, entropy, state.reference)
        state.switches = state.switches + to_token.long()
        latent = state.latent & ~state.locked
        if view.markers is None:
            return latent
        progress = view.step / max(view.max_steps, 1)
        alpha = self.alpha0 + (1 - self.alpha0) * progress
        beta = self.beta0 + (1 - self.beta0) * progress
        state.marker_weight[:, 0] = torch.where(to_latent & latent, 1 - alpha, 0.0)
        state.marker_weight[:, 1] = torch.where(to_token, 1 - beta, 0.0)
        return latent | to_token  # the switch input is continuous (the soft input, blended), even at β = 1


@dataclasses.dataclass
class ColdStopState(RowState):
    low_run: torch.Tensor  # (B,) long, consecutive steps with tempered entropy below the bound
    stopped: torch.Tensor  # (B,) bool, thinking has ended: token mode for good


class ColdStopGate:
    """Soft Thinking's schedule (Zhang et al., 2025, "Soft Thinking: Unlocking the Reasoning Potential
    of LLMs in Continuous Concept Space"): every thinking step is latent until *Cold Stop*, when the
    entropy of the tempered distribution softmax(logits / ``temperature``) has stayed below
    ``entropy`` for ``steps`` consecutive steps; from that step on the row is in token mode (with
    ``--markers`` the end marker is fed there, as the paper injects its end-of-thinking token)."""

    def __init__(self, entropy: float = 0.01, steps: int = 256, temperature: float = 0.6):
        self.entropy = entropy
        self.steps = steps
        self.temperature = temperature

    def start(self, batch: int, device: torch.device | str) -> ColdStopState:
        return ColdStopState(
            torch.zeros(batch, dtype=torch.long, device=device), torch.zeros(batch, dtype=torch.bool, device=device)
        )

    def __call__(self, view: StepView, state: ColdStopState) -> torch.Tensor:
        log_p = torch.log_softmax(view.logits.float() / self.temperature, dim=-1)  # (B, V)
        tempered = -(log_p.exp() * log_p.clamp_min(torch.finfo(log_p.dtype).min)).sum(-1)  # (B,)
        low = tempered < self.entropy
        state.low_run = torch.where(low & ~state.stopped, state.low_run + 1, 0)
        state.stopped = state.stopped | (state.low_run >= self.steps)
        return ~state.stopped


def make_gate(cfg: GateConfig) -> Gate:
    if cfg.kind == "token":
        return TokenGate()
    if cfg.kind == "latent":
        return LatentGate()
    if cfg.kind == "fixed":
        return FixedGate(cfg.k)
    if cfg.kind == "think-router":
        return ThinkRouterGate(cfg.threshold)
    if cfg.kind == "swir":
        return SwiReasoningGate(cfg.window, cfg.max_switches, cfg.alpha0, cfg.beta0)
    if cfg.kind == "cold-stop":
        return ColdStopGate(cfg.cold_stop_entropy, cfg.cold_stop_steps, cfg.cold_stop_temperature)
    return EntropyGate(cfg.threshold, cfg.unit, cfg.max_consecutive, cfg.max_latent, cfg.direction)
