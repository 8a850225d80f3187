"""Per-step measurements of information loss, as observers of the decode loop (``--measure NAME``).

The loop calls every observer at fixed points — ``start`` once with the KV cache, ``step`` after
each step's inputs are chosen, ``reindex`` when rows fork (prefix-shared decoding), ``finish`` once —
and never branches on what is measured. An
observer may run probe forwards on the cache (the loop rolls them back) but never changes what is
decoded: the same tokens, modes and entropies with and without it (tested).

``counterfactual``:
* Token steps: ``kl_counterfactual`` = KL(p_{t+1} | latent fed ‖ p_{t+1} | token fed), from one probe
  forward with the latent in place of the token. How much would the next step have changed had the
  latent been kept?
* Latent steps: how far the fed vector is from the token vocabulary — ``latent_token_cos`` (cosine
  to the nearest input-embedding row), ``latent_norm`` (its norm over that row's norm) — and the
  logit lens: the top tokens of the output head applied to the latent (``lens_top``).
Values are NaN (None in records) at steps where a measurement does not apply.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from latentcot.errors import InputError
from latentcot.types import DecodedStep, EmbeddingTable, Probe

LENS_TOP = 5  # logit-lens tokens kept per latent step
MEASUREMENTS = ("counterfactual", "rollout")  # rollout (latentcot.rollout) is decoded as extra tree arms


class StepObserver(Protocol):
    """Watches one ``generate`` call. ``finish`` returns extra per-step arrays, (B, T) lists by name."""

    def start(self, cache) -> None: ...

    # probe: None at the last step; continuing (B,) bool: rows that take another step (a row's last step
    # has no next step to compare with)
    def step(self, step: DecodedStep, probe: Probe | None, continuing: torch.Tensor) -> None: ...

    def reindex(self, parent: torch.Tensor) -> None: ...  # rows forked: row i continues row parent[i]

    def finish(self, is_latent: list[list[bool]], decode: Callable[[int], str]) -> dict[str, list[list]]: ...


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """(B,) KL(softmax(p) ‖ softmax(q)) in nats; exactly 0 when the logits are equal."""
    log_p, log_q = p_logits.float().log_softmax(-1), q_logits.float().log_softmax(-1)  # (B, V)
    terms = log_p.exp() * (log_p - log_q)
    return torch.where(log_p.isneginf(), 0.0, terms).sum(-1).clamp_min(0.0)  # 0·log 0 = 0


@dataclass
class Counterfactual:
    """``--measure counterfactual``: probe KL at token steps; geometry and logit lens at latent steps."""

    table: EmbeddingTable
    head: torch.nn.Module  # the model's output embedding (LM head)
    unit_rows: torch.Tensor = field(init=False)  # (V, D) fp32 embedding rows of norm 1
    kl: list[torch.Tensor] = field(default_factory=list)  # each (B,) fp32, NaN off token steps
    cos: list[torch.Tensor] = field(default_factory=list)  # each (B,) fp32, NaN off latent steps
    norm: list[torch.Tensor] = field(default_factory=list)  # each (B,) fp32, NaN off latent steps
    lens: list[torch.Tensor] = field(default_factory=list)  # each (B, LENS_TOP) long
    # the previous step's probe logits (B, V) and token rows (B,), compared with this step's logits
    pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def __post_init__(self):
        weight = self.table.weight.float()  # raw rows: the table's scale (> 0) does not change a direction
        self.unit_rows = weight / weight.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def start(self, cache) -> None:
        if hasattr(cache, "activate_past_recording"):  # sliding-window layers can then roll a probe back
            cache.activate_past_recording()

    def step(self, step: DecodedStep, probe: Probe | None, continuing: torch.Tensor) -> None:
        if self.pending is not None:  # the view's logits are the next step's, given the token actually fed
            probe_logits, was_token = self.pending
            self.kl.append(_where(was_token, kl_divergence(probe_logits, step.view.logits)))
        vector = step.latent_vector()  # (B, D)
        self.latent_geometry(vector, step.is_latent)
        self.pending = (probe(vector), step.is_token & continuing) if probe is not None else None

    def reindex(self, parent: torch.Tensor) -> None:
        for name in ("kl", "cos", "norm", "lens"):
            setattr(self, name, [values[parent] for values in getattr(self, name)])
        if self.pending is not None:
            self.pending = (self.pending[0][parent], self.pending[1][parent])

    def latent_geometry(self, vector: torch.Tensor, is_latent: torch.Tensor) -> None:
        """Record, for the rows that fed ``vector`` (B, D) this step, its place among token embeddings."""
        v = vector.float()
        norms = v.norm(dim=-1).clamp_min(1e-12)  # (B,)
        cos, nearest = (v @ self.unit_rows.T / norms[:, None]).max(dim=-1)  # (B,), (B,)
        ratio = norms / self.table.rows(nearest).float().norm(dim=-1).clamp_min(1e-12)  # against the scaled row
        self.cos.append(_where(is_latent, cos))
        self.norm.append(_where(is_latent, ratio))
        lens_logits = self.head(vector.to(self.table.weight.dtype)).float()  # (B, V)
        self.lens.append(lens_logits.topk(LENS_TOP, dim=-1).indices)

    def finish(self, is_latent: list[list[bool]], decode: Callable[[int], str]) -> dict[str, list[list]]:
        """(T, B) -> per-row lists; NaN -> None; lens ids -> token strings, at latent steps only.
        A row's last step has no next step to compare with: its KL is NaN."""
        self.kl.append(torch.full_like(self.cos[-1], float("nan")))
        out: dict[str, list[list]] = {}
        for name, values in (
            ("kl_counterfactual", self.kl),
            ("latent_token_cos", self.cos),
            ("latent_norm", self.norm),
        ):
            rows = torch.stack(values, dim=1).cpu().tolist()  # (B, T)
            out[name] = [[None if x != x else x for x in row] for row in rows]
        lens = torch.stack(self.lens, dim=1).cpu().tolist()  # (B, T, LENS_TOP)
        out["lens_top"] = [
            [[decode(i) for i in ids] if latent else None for latent, ids in zip(row_latent, row)]
            for row_latent, row in zip(is_latent, lens)
        ]
        return out


def _where(rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``values`` at ``rows``, NaN elsewhere."""
    return torch.where(rows, values, torch.full_like(values, float("nan")))


def make_observers(measure: Sequence[str], table: EmbeddingTable, head: torch.nn.Module) -> list[StepObserver]:
    """One fresh observer per requested measurement (observers hold per-call state)."""
    observers: list[StepObserver] = []
    for name in measure:
        if name != "counterfactual":
            raise InputError(f"unknown step observer {name!r}; valid: counterfactual")
        observers.append(Counterfactual(table, head))
    return observers
