"""Per-step measurements of information loss, switched on by ``--measure counterfactual``.

* Token steps: ``kl_counterfactual`` = KL(p_{t+1} | latent fed ‖ p_{t+1} | token fed). The engine
  runs one probe forward with the latent in place of the token on the same KV cache, rolls the
  cache back, then runs its ordinary forward; this module compares the two next-step
  distributions. How much would the next step have changed had the latent been kept?
* Latent steps: how far the fed vector is from the token vocabulary — ``latent_token_cos`` (cosine
  to the nearest input-embedding row), ``latent_norm`` (its norm over that row's norm) — and the
  logit lens: the top tokens of the output head applied to the latent (``lens_top``).
Values are NaN (None in records) at steps where a measurement does not apply.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from latentcot.types import EmbeddingTable

LENS_TOP = 5  # logit-lens tokens kept per latent step


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """(B,) KL(softmax(p) ‖ softmax(q)) in nats; exactly 0 when the logits are equal."""
    log_p, log_q = p_logits.float().log_softmax(-1), q_logits.float().log_softmax(-1)  # (B, V)
    terms = log_p.exp() * (log_p - log_q)
    return torch.where(log_p.isneginf(), 0.0, terms).sum(-1).clamp_min(0.0)  # 0·log 0 = 0


@dataclass
class StepMeasurements:
    """Per-step (B,) tensors of every measurement, kept on the device until the loop ends."""

    table: EmbeddingTable
    head: torch.nn.Module                                   # the model's output embedding (LM head)
    unit_rows: torch.Tensor = field(init=False)             # (V, D) fp32 embedding rows of norm 1
    kl: list[torch.Tensor] = field(default_factory=list)    # each (B,) fp32, NaN off token steps
    cos: list[torch.Tensor] = field(default_factory=list)   # each (B,) fp32, NaN off latent steps
    norm: list[torch.Tensor] = field(default_factory=list)  # each (B,) fp32, NaN off latent steps
    lens: list[torch.Tensor] = field(default_factory=list)  # each (B, LENS_TOP) long

    def __post_init__(self):
        weight = self.table.weight.float()
        self.unit_rows = weight / weight.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def latent_geometry(self, vector: torch.Tensor, is_latent: torch.Tensor) -> None:
        """Record, for the rows that fed ``vector`` (B, D) this step, its place among token embeddings."""
        v = vector.float()
        norms = v.norm(dim=-1).clamp_min(1e-12)                               # (B,)
        cos, nearest = (v @ self.unit_rows.T / norms[:, None]).max(dim=-1)   # (B,), (B,)
        ratio = norms / self.table.weight[nearest].float().norm(dim=-1).clamp_min(1e-12)
        nan = torch.full_like(cos, float("nan"))
        self.cos.append(torch.where(is_latent, cos, nan))
        self.norm.append(torch.where(is_latent, ratio, nan))
        lens_logits = self.head(vector.to(self.table.weight.dtype)).float()  # (B, V)
        self.lens.append(lens_logits.topk(LENS_TOP, dim=-1).indices)

    def counterfactual(self, probe_logits: torch.Tensor | None, next_logits: torch.Tensor | None,
                       is_token: torch.Tensor) -> None:
        """Record KL(probe ‖ next) at token rows; NaN when either side was not computed (last step)."""
        if probe_logits is None or next_logits is None:
            self.kl.append(torch.full(is_token.shape, float("nan"), device=is_token.device))
            return
        kl = kl_divergence(probe_logits, next_logits)
        self.kl.append(torch.where(is_token, kl, torch.full_like(kl, float("nan"))))

    def per_row(self, is_latent: list[list[bool]], decode) -> dict[str, list[list]]:
        """(T, B) -> per-row lists; NaN -> None; lens ids -> token strings, at latent steps only."""
        out: dict[str, list[list]] = {}
        for name, values in (("kl_counterfactual", self.kl), ("latent_token_cos", self.cos),
                             ("latent_norm", self.norm)):
            rows = torch.stack(values, dim=1).cpu().tolist()                  # (B, T)
            out[name] = [[None if x != x else x for x in row] for row in rows]
        lens = torch.stack(self.lens, dim=1).cpu().tolist()                   # (B, T, LENS_TOP)
        out["lens_top"] = [[[decode(i) for i in ids] if latent else None for latent, ids in zip(row_latent, row)]
                           for row_latent, row in zip(is_latent, lens)]
        return out
