"""Shared vocabulary: what flows between tasks, the engine, the store and analysis."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

Mode = Literal["token", "latent", "marker"]
TOKEN: Mode = "token"  # a token was sampled and its embedding fed back
LATENT: Mode = "latent"  # a continuous vector was fed back instead of a token
MARKER: Mode = "marker"  # a begin/end-of-thought marker token was forced around a latent segment

LATENT_TEXT = "⟨latent⟩"  # how a latent step is rendered inside a completion


@dataclass(frozen=True)
class Example:
    """One problem. ``steps`` is the gold chain of reasoning (may be empty)."""

    id: str
    question: str
    answer: str
    steps: tuple[str, ...] = ()
    domain: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)  # task-specific extras (e.g. a graph)


@dataclass(frozen=True)
class EmbeddingTable:
    """The model's input-embedding matrix and what latent modes need from it, computed once."""

    weight: torch.Tensor  # (V, D)
    mean_norm: torch.Tensor  # () mean L2 norm of the rows

    @classmethod
    def from_module(cls, embed: torch.nn.Module) -> EmbeddingTable:
        """The table of an input-embedding module (``model.get_input_embeddings()``)."""
        weight = embed.weight.detach()  # (V, D)
        return cls(weight=weight, mean_norm=weight.float().norm(dim=-1).mean())


@dataclass(frozen=True)
class StepView:
    """What the engine knows at one decode step, for the whole batch of B rows."""

    step: int  # index of the step being decided (0 = first generated position)
    logits: torch.Tensor  # (B, V) fp32, raw next-token logits (temperature 1)
    entropy: torch.Tensor  # (B,) nats, H of softmax(logits)
    hidden: torch.Tensor  # (B, D) final-layer (post-norm) state at the last position
    n_latent: torch.Tensor  # (B,) long, latent steps this row has taken so far
    latent_run: torch.Tensor  # (B,) long, length of the row's current run of latent steps
    active: torch.Tensor  # (B,) bool, row still generating
    sampled: torch.Tensor | None = None  # (B,) long, the token the sampler chose this step (argmax when greedy)
    generators: Sequence[torch.Generator] = ()  # one per row: randomness a gate or latent mode draws


@dataclass(frozen=True)
class DecodedStep:
    """What the decode loop did at one step, for the whole batch; handed to step observers."""

    view: StepView  # what the gate decided from
    is_latent: torch.Tensor  # (B,) bool, a latent vector was fed
    is_marker: torch.Tensor  # (B,) bool, a begin/end-of-thought marker was fed
    fed: torch.Tensor  # (B,) long, the token fed (sampled or marker); unused on latent rows
    latent_vector: Callable[[], torch.Tensor]  # () -> (B, D) the latent mode's vector for every row, computed once

    @property
    def is_token(self) -> torch.Tensor:  # (B,) bool, a sampled token was fed
        return ~(self.is_latent | self.is_marker)


# Runs one forward on the decode loop's KV cache with ``inputs_embeds`` (B, D) at the next position and
# returns that position's fp32 logits (B, V); the cache is rolled back afterwards, so decoding is unchanged.
Probe = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Trace:
    """Everything one row did during generation; per-step lists have equal length."""

    prompt: str
    completion: str  # token text with each latent step rendered as LATENT_TEXT
    finish_reason: str  # "eos" | "stop" | "length"
    mode: list[str]  # per step: "token" | "latent" | "marker"
    token_id: list[int]  # sampled token; argmax for latent steps; the marker id for markers
    entropy: list[float]  # nats, of the distribution the step was decided from
    p_token: list[float]  # probability of token_id under that distribution
    p_max: list[float]  # largest probability of that distribution
    extra: dict[str, list] = field(default_factory=dict)  # optional measured per-step arrays

    @property
    def n_steps(self) -> int:
        return len(self.mode)

    @property
    def n_latent(self) -> int:
        return sum(m == LATENT for m in self.mode)

    def steps(self) -> dict[str, list]:
        """The ``steps`` object of a samples.jsonl record: equal-length arrays."""
        return {
            "mode": self.mode,
            "token_id": self.token_id,
            "entropy": self.entropy,
            "p_token": self.p_token,
            "p_max": self.p_max,
            **self.extra,
        }


@dataclass(frozen=True)
class Extraction:
    """An answer pulled out of a completion, and which named strategy found it."""

    prediction: str | None  # None when no strategy matched
    strategy: str | None


@dataclass(frozen=True)
class SampleRecord:
    """One line of samples.jsonl: one example under one setting."""

    setting: Mapping[str, Any]
    setting_id: str
    task: str  # task name, e.g. "addition" or a file's name
    domain: str
    example_id: str
    prompt: str
    completion: str
    answer: str
    prediction: str | None
    correct: bool
    n_steps: int
    n_latent: int
    steps: Mapping[str, list]
    task_spec: str = ""  # what loads this exact task: "addition:n=4,digits=3,reverse=0" or a path
    extraction: str | None = None  # name of the extraction strategy that matched
    finish_reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "setting": dict(self.setting),
            "setting_id": self.setting_id,
            "task": self.task,
            "task_spec": self.task_spec,
            "domain": self.domain,
            "example_id": self.example_id,
            "prompt": self.prompt,
            "completion": self.completion,
            "answer": self.answer,
            "prediction": self.prediction,
            "correct": self.correct,
            "extraction": self.extraction,
            "finish_reason": self.finish_reason,
            "n_steps": self.n_steps,
            "n_latent": self.n_latent,
            "steps": dict(self.steps),
        }
