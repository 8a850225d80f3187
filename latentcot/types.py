"""Shared vocabulary: what flows between tasks, the engine, the store and analysis."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

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
    """The model's input embeddings, on the scale its embedding module produces, and what latent
    modes need from them.

    Row ``i`` of the table is ``embed(i)``, which is ``weight[i] * scale``: Gemma's embedding module
    multiplies by sqrt(hidden) in its forward, and ``inputs_embeds`` are not scaled again, so a
    vector mixed from the raw ``weight`` would be that much too small. ``scale`` is kept apart (not
    folded into a copy of ``weight``) because the tables that have one are among the largest
    (Gemma's 256k rows). Read rows through ``rows``/``scaled``, never by indexing ``weight`` alone.
    """

    weight: torch.Tensor  # (V, D) raw rows; the module's embedding of token i is weight[i] * scale
    mean_norm: torch.Tensor  # () mean L2 norm of the scaled rows
    scale: float = 1.0  # > 0, exactly representable in weight.dtype (so rows match the module bit for bit)

    CHUNK_ROWS: ClassVar[int] = 65536  # rows per chunk when reducing over a table (bounds the upcast copy)
    PROBE_IDS: ClassVar[int] = 16  # ids compared when detecting an embedding module's scale

    @classmethod
    def from_module(cls, embed: torch.nn.Module) -> EmbeddingTable:
        """The table of an input-embedding module (``model.get_input_embeddings()``).

        Compares ``embed(ids)`` with ``weight[ids]`` for a few ids: equal -> ``weight`` as is (no
        copy); a constant positive ratio -> ``weight`` with that ``scale``; anything else (or no
        ``weight``) -> every row materialised as ``embed(arange(V))``."""
        with torch.no_grad():
            weight = getattr(embed, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.dim() == 2:
                weight = weight.detach()
                scale = cls._module_scale(embed, weight)
                if scale is not None:
                    return cls(weight, cls._mean_norm(weight) * scale, scale)
                vocab, device = weight.shape[0], weight.device
            else:
                vocab, device = embed.num_embeddings, next(embed.parameters()).device
            table = embed(torch.arange(vocab, device=device)).detach()  # (V, D)
            return cls(table, cls._mean_norm(table))

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (...) -> (..., D): exactly what the embedding module gives for those ids."""
        return self.scaled(self.weight[ids])

    def scaled(self, raw: torch.Tensor) -> torch.Tensor:
        """(..., D) built linearly from raw ``weight`` rows (a mixture) -> on the module's scale."""
        return raw if self.scale == 1.0 else raw * self.scale

    @functools.cached_property
    def mean_row(self) -> torch.Tensor:
        """(D,) the mean of the scaled rows (every row of the table), in the table's dtype. Computed on
        first use and kept on the instance: a pure function of the frozen fields."""
        total = torch.zeros(self.weight.shape[1], dtype=torch.float64, device=self.weight.device)  # (D,)
        for chunk in self.weight.split(self.CHUNK_ROWS):  # never an upcast copy of a whole large table
            total += chunk.sum(dim=0, dtype=torch.float64)
        return (total / self.weight.shape[0] * self.scale).to(self.weight.dtype)

    @classmethod
    def _mean_norm(cls, weight: torch.Tensor) -> torch.Tensor:
        """() fp32 mean L2 norm of the rows of ``weight`` (V, D), reduced chunk by chunk."""
        chunks = weight.split(cls.CHUNK_ROWS)
        total = sum(torch.linalg.vector_norm(c.float(), dim=-1).double().sum() for c in chunks)
        return (total / weight.shape[0]).float()

    @classmethod
    def _module_scale(cls, embed: torch.nn.Module, weight: torch.Tensor) -> float | None:
        """The constant ``s`` with ``embed(i) == weight[i] * s`` bit for bit on a few probe ids, or None.

        ``s`` is estimated by least squares in float64 and rounded to the weight's dtype, as HF's scaled
        embeddings cast their scale (``embed_scale.to(weight.dtype)``) before multiplying."""
        vocab = weight.shape[0]
        ids = torch.linspace(0, vocab - 1, steps=min(vocab, cls.PROBE_IDS), device=weight.device).long().unique()
        out, raw = embed(ids), weight[ids]  # (n, D) each
        if out.shape != raw.shape or out.dtype != raw.dtype:
            return None
        if torch.equal(out, raw):
            return 1.0
        raw64 = raw.double()
        energy = (raw64 * raw64).sum()
        if energy == 0:
            return None
        scale = torch.tensor(((out.double() * raw64).sum() / energy).item(), dtype=weight.dtype).item()
        if not 0 < scale < float("inf"):  # a negative ratio would flip cosines (and NaN fails too): materialise
            return None
        return scale if torch.equal(raw * scale, out) else None


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
    markers: tuple[int, int] | None = None  # (begin, end) thought-marker token ids, when the setting has them
    max_steps: int = 0  # the step budget (max_new_tokens): schedules that depend on progress use it


@dataclass(frozen=True)
class DecodedStep:
    """What the decode loop did at one step, for the whole batch; handed to step observers."""

    view: StepView  # what the gate decided from
    is_latent: torch.Tensor  # (B,) bool, a latent vector was fed
    is_marker: torch.Tensor  # (B,) bool, a begin/end-of-thought marker was fed
    fed: torch.Tensor  # (B,) long, the token fed (sampled or marker); unused on latent rows
    latent_vector: Callable[[], torch.Tensor]  # () -> (B, D) the latent mode's vector for every row, computed once
    emitted: torch.Tensor  # (B,) bool, a latent step whose method also emitted the sampled token (MoI, SwiReasoning)

    @property
    def is_token(self) -> torch.Tensor:  # (B,) bool, a sampled token was fed
        return ~(self.is_latent | self.is_marker)

    @property
    def is_text(self) -> torch.Tensor:  # (B,) bool, the step adds a token to the row's text
        return self.is_token | self.emitted

    @property
    def text_token(self) -> torch.Tensor:  # (B,) long, that token: the fed one, or the emitted sample
        return torch.where(self.emitted, self.view.sampled, self.fed)


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
