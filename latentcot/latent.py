"""Latent modes build the continuous vector fed back on a latent step.

A latent mode is a one-method callable ``latent(view, table) -> Tensor (B, D)``, in the dtype of
the embedding table, computed for the whole batch (the engine picks rows with ``where``). Vectors
built from token embeddings are on the scale the model's own embedding module produces (Gemma's
multiplies by sqrt(hidden)): they go through ``EmbeddingTable.rows``/``scaled``, never the raw
``weight``. A top-k soft latent with k = 1 is therefore exactly the argmax token's input embedding.

Two families:
* the latents under study — ``hidden`` (COCONUT), ``hidden-normed``, ``soft`` (Soft Thinking),
  ``topk-soft``;
* ablations, which answer "does the latent's content matter?" — ``zero``, ``mean-embedding``,
  ``shuffled``, ``noise``: each keeps something of a real latent (its place in the sequence, its
  scale, its distribution over rows) and throws away what this row's latent says.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

from latentcot.config import LatentConfig
from latentcot.sampling import row_seed
from latentcot.types import EmbeddingTable, StepView


class LatentMode(Protocol):
    def __call__(self, view: StepView, table: EmbeddingTable) -> torch.Tensor: ...  # (B, D)


class HiddenLatent:
    """COCONUT (Hao et al. 2024, "Training Large Language Models to Reason in a Continuous Latent
    Space"): the raw final-layer (post-norm) hidden state at the last position, fed back as the next
    input embedding. Models not trained for it see a vector off the embedding manifold."""

    def __call__(self, view: StepView, table: EmbeddingTable) -> torch.Tensor:
        return view.hidden.to(table.weight.dtype)


class NormedHiddenLatent:
    """COCONUT's hidden state rescaled to the mean input-embedding norm (this project's variant).

    Final hidden states are often several times longer than token embeddings; this keeps the
    direction and puts the vector on the scale the input layer was trained on (the scaled table's
    mean row norm, so Gemma's sqrt(hidden) factor is included).
    """

    def __call__(self, view: StepView, table: EmbeddingTable) -> torch.Tensor:
        hidden = view.hidden.float()  # (B, D)
        scale = table.mean_norm / hidden.norm(dim=-1, keepdim=True).clamp_min(1e-6)  # (B, 1)
        return (hidden * scale).to(table.weight.dtype)


def _mix(weights: torch.Tensor, table: EmbeddingTable) -> torch.Tensor:
    """weights (B, V) @ E (V, D) on the module's scale; the logits' vocabulary may be padded past
    the embedding rows. Mixes raw rows and scales the (B, D) result: no scaled copy of the table."""
    vocab = min(weights.shape[-1], table.weight.shape[0])
    return table.scaled(weights[:, :vocab].to(table.weight.dtype) @ table.weight[:vocab])  # (B, D)


class SoftLatent:
    """Soft Thinking (Zhang et al. 2025, "Soft Thinking: Unlocking the Reasoning Potential of LLMs
    in Continuous Concept Space"; also SwiReasoning's soft mode): the expected token embedding under
    softmax(logits / temperature), over the whole vocabulary."""

    def __init__(self, temperature: float = 1.0):
        self.temperature = temperature

    def __call__(self, view: StepView, table: EmbeddingTable) -> torch.Tensor:
        return _mix(torch.softmax(view.logits / self.temperature, dim=-1), table)


class TopKSoftLatent:
    """The expected embedding over the k most likely tokens only, renormalised (Soft Thinking's
    practical form, which keeps the top 10). k = 1 is exactly the argmax token's input embedding,
    so the latent gate with it decodes like greedy token mode (tested on every architecture)."""

    def __init__(self, k: int = 8, temperature: float = 1.0, min_p: float = 0.0):
        self.k = k
        self.temperature = temperature
        self.min_p = min_p  # Soft Thinking: drop tokens whose probability is below min_p x the top one

    def __call__(self, view: StepView, table: EmbeddingTable) -> torch.Tensor:
        logits = view.logits[:, : table.weight.shape[0]]  # drop padded vocab
        top_logits, top_ids = logits.topk(min(self.k, logits.shape[-1]), dim=-1)  # (B, k), descending
        weights = torch.softmax(top_logits / self.temperature, dim=-1)  # (B, k)
        if self.min_p > 0:  # relative to the top token, which always stays; renormalised over the rest
            weights = torch.where(weights >= self.min_p * weights[:, :1], weights, 0.0)
            weights = weights / weights.sum(-1, keepdim=True)
        rows = table.rows(top_ids)  # (B, k, D), each exactly the module's embedding of that token
        return torch.einsum("bk,bkd->bd", weights.to(rows.dtype), rows)


class ZeroLatent:
    """Ablation: the zero vector. The step still takes a position (attention still reads the context,
    GPT-2 still adds its position embedding) but carries no content: the floor any latent should beat."""

    def __call__(self, view: StepView, table: EmbeddingTable) -> torch.Tensor:
        batch, dim = view.logits.shape[0], table.weight.shape[1]
        return torch.zeros(batch, dim, dtype=table.weight.dtype, device=table.weight.device)


class MeanEmbeddingLatent:
    """Ablation: the mean input-embedding row (over every row of the table, special and unused rows
    included), on the model's scale. The same vector for every row and step: an "average token" with
    no information about this row, on the input manifold's scale (unlike ``zero``)."""

    def __call__(self, view: StepView, table: EmbeddingTable) -> torch.Tensor:
        return table.mean_row.expand(view.logits.shape[0], -1).clone()  # (B, D); a copy, so the cached row stays intact


class ShuffledLatent:
    """Ablation: another row's ``hidden`` latent of the same batch and step — row i takes row
    (i + 1) mod B's final hidden state. Real, in-distribution latent content, just not this row's.

    What a row gets depends on the batch: its size and order, and rows that already finished (their
    states are still computed and may be handed on). With B = 1 a row gets its own hidden state, so
    ``shuffled`` is then ``hidden``; use batches of several distinct examples for this ablation."""

    def __call__(self, view: StepView, table: EmbeddingTable) -> torch.Tensor:
        return view.hidden.roll(-1, dims=0).to(table.weight.dtype)  # out[i] = hidden[(i + 1) % B]


class NoiseLatent:
    """Ablation: a random direction (isotropic Gaussian, normalised) with the norm of the row's
    ``hidden`` latent. Same scale as COCONUT's vector, no content.

    Randomness is per row: row i's noise at step t is drawn from a fresh generator seeded from
    (``view.generators[i].initial_seed()``, t), so it is reproducible from the row's seed and
    independent of its batch-mates. The row's own generator is not advanced: a latent mode is called
    for every row whenever any row (or a measurement) needs it, so drawing from the sampling stream
    would make a row's sampled tokens depend on its batch-mates' gates and on ``--measure``."""

    def __call__(self, view: StepView, table: EmbeddingTable) -> torch.Tensor:
        batch, dim = view.hidden.shape
        if len(view.generators) != batch:
            raise ValueError(f"the noise latent needs one generator per row; got {len(view.generators)} for {batch}")
        noise = torch.stack(
            [torch.randn(dim, generator=_step_generator(g, view.step), device=g.device) for g in view.generators]
        ).to(view.hidden.device)  # (B, D) fp32
        norms = view.hidden.float().norm(dim=-1, keepdim=True)  # (B, 1)
        return (noise * (norms / noise.norm(dim=-1, keepdim=True).clamp_min(1e-12))).to(table.weight.dtype)


class MixtureOfInputs:
    """Mixture of Inputs (Zhuang et al., 2025, "Text Generation Beyond Discrete Token Sampling"), as its
    ``gpu_model_runner``: every step samples a token y and feeds H_n·Σ_i q_i e_i + (1 − H_n)·e_y over the
    ``k`` most likely tokens, with p their probabilities renormalised, q = (p + β·onehot(y)) / (1 + β)
    and H_n = H(p) / log k. The sampled token is the one the run's sampler chose (``view.sampled``);
    the method emits it, so a record shows it (``steps.emitted``) and the completion reads as text."""

    def __init__(self, k: int = 20, beta: float = 1.0):
        self.k = k
        self.beta = beta

    def __call__(self, view: StepView, table: EmbeddingTable) -> torch.Tensor:
        logits = view.logits[:, : table.weight.shape[0]].float()
        k = min(self.k, logits.shape[-1])
        top_logits, top_ids = logits.topk(k, dim=-1)  # (B, k)
        p = torch.softmax(top_logits, dim=-1)  # (B, k), renormalised over the top k
        h_n = -(p * p.clamp_min(1e-30).log()).sum(-1, keepdim=True) / max(math.log(k), 1e-12)  # (B, 1) in [0, 1]
        onehot = (top_ids == view.sampled[:, None]).float()  # (B, k); all zero if y is outside the top k
        q = (p + self.beta * onehot) / (1 + self.beta)
        rows = table.rows(top_ids).float()  # (B, k, D)
        mixture = torch.einsum("bk,bkd->bd", q, rows)
        sampled = table.rows(view.sampled).float()  # (B, D)
        return (h_n * mixture + (1 - h_n) * sampled).to(table.weight.dtype)


class RandomizedSoftLatent:
    """Randomized Soft Thinking (Wu et al., 2025, "LLMs are Single-threaded Reasoners: Demystifying the
    Working Mechanism of Soft Thinking"): the soft input with Gumbel-softmax weights,
    softmax((log p + g) / τ) with g = −log(−log u), u ~ U(0, 1) per token. Row i's noise at step t comes
    from a generator seeded from (its own generator's seed, t), as ``noise`` does: reproducible per row,
    independent of its batch, and the row's sampling stream is left alone."""

    def __init__(self, temperature: float = 0.5):
        self.temperature = temperature

    def __call__(self, view: StepView, table: EmbeddingTable) -> torch.Tensor:
        log_p = torch.log_softmax(view.logits[:, : table.weight.shape[0]].float(), dim=-1)  # (B, V)
        u = torch.stack(
            [
                torch.rand(log_p.shape[-1], generator=_step_generator(g, view.step, "gumbel"), device=g.device)
                for g in _generators(view)
            ]
        ).to(log_p.device)  # (B, V)
        gumbel = -torch.log(-torch.log(u.clamp(1e-20, 1 - 1e-7)))
        return _mix(torch.softmax((log_p + gumbel) / self.temperature, dim=-1), table)


class MultiplexLatent:
    """Multiplex Thinking (Tang et al., 2026, "Multiplex Thinking: Reasoning via Token-wise Branch-and-
    Merge"): K tokens sampled independently from p = softmax(logits) and merged into one input,
    c = Eᵀ(s ⊙ w) with s the average of their one-hot vectors; ``mean``: w = 1 (the K embeddings
    averaged, repeats counted), ``weighted``: w = p, renormalised over the sampled tokens. When the
    model is sure the K samples agree and c is that token's embedding. Draws as ``random-soft`` does."""

    def __init__(self, width: int = 3, merge: str = "mean"):
        self.width = width
        self.merge = merge

    def __call__(self, view: StepView, table: EmbeddingTable) -> torch.Tensor:
        p = torch.softmax(view.logits[:, : table.weight.shape[0]].float(), dim=-1)  # (B, V)
        samples = torch.stack(
            [
                torch.multinomial(
                    row, self.width, replacement=True, generator=_step_generator(g, view.step, "multiplex")
                )
                for row, g in zip(p.cpu(), _generators(view))
            ]
        ).to(p.device)  # (B, K)
        weights = torch.ones_like(samples, dtype=torch.float32) if self.merge == "mean" else p.gather(-1, samples)
        weights = weights / weights.sum(-1, keepdim=True)  # (B, K)
        rows = table.rows(samples).float()  # (B, K, D)
        return torch.einsum("bk,bkd->bd", weights, rows).to(table.weight.dtype)


class Emitting:
    """A latent mode whose latent steps also emit the token the sampler chose (MoI, SwiReasoning): the
    engine records that token, shows it in the completion, and lets it end the row (EOS, stop strings)."""

    emits_tokens = True

    def __init__(self, mode: LatentMode):
        self.mode = mode

    def __call__(self, view: StepView, table: EmbeddingTable) -> torch.Tensor:
        return self.mode(view, table)


def _generators(view: StepView):
    if len(view.generators) != view.logits.shape[0]:
        raise ValueError(f"this latent mode needs one generator per row; got {len(view.generators)}")
    return view.generators


def _step_generator(row: torch.Generator, step: int, purpose: str = "noise") -> torch.Generator:
    """A generator for one row, step and purpose, seeded from the row generator's seed (which it leaves alone)."""
    return torch.Generator(device=row.device).manual_seed(row_seed(row.initial_seed(), f"{purpose}{step}"))


def make_latent(cfg: LatentConfig) -> LatentMode:
    mode = _make(cfg)
    return Emitting(mode) if cfg.emit else mode


def _make(cfg: LatentConfig) -> LatentMode:
    if cfg.kind == "soft":
        return SoftLatent(cfg.temperature)
    if cfg.kind == "topk-soft":
        return TopKSoftLatent(cfg.top_k, cfg.temperature, cfg.min_p)
    if cfg.kind == "moi":
        return MixtureOfInputs(cfg.top_k, cfg.beta)
    if cfg.kind == "random-soft":
        return RandomizedSoftLatent(cfg.temperature)
    if cfg.kind == "multiplex":
        return MultiplexLatent(cfg.top_k, cfg.merge)
    plain = {
        "hidden": HiddenLatent,
        "hidden-normed": NormedHiddenLatent,
        "zero": ZeroLatent,
        "mean-embedding": MeanEmbeddingLatent,
        "shuffled": ShuffledLatent,
        "noise": NoiseLatent,
    }
    return plain[cfg.kind]()
