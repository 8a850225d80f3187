"""Per-step distribution statistics and token choice (greedy, temperature, top-k, top-p)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from latentcot.config import DecodeConfig


def distribution_stats(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """probs (B, V) and entropy (B,) in nats of softmax(logits); -inf logits contribute 0."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    probs = log_probs.exp()
    # clamp turns log 0 = -inf into a finite number so that 0 * log 0 is 0, not nan (faster than xlogy)
    entropy = -(probs * log_probs.clamp_min(torch.finfo(log_probs.dtype).min)).sum(-1)
    return probs, entropy


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus(top-p) set to -inf; the most likely token always stays."""
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        mass_before = sorted_logits.softmax(-1).cumsum(-1) - sorted_logits.softmax(-1)
        drop_sorted = mass_before >= top_p  # keeps token 0 always
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose_tokens(
    logits: torch.Tensor, cfg: DecodeConfig, generators: Sequence[torch.Generator] | None
) -> torch.Tensor:
    """(B,) token ids. Sampling draws each row from its own generator, so a row's samples do not
    depend on which other rows share its batch."""
    if cfg.greedy:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits / cfg.temperature, cfg.top_k, cfg.top_p).softmax(-1)  # (B, V)
    assert generators is not None and len(generators) == probs.shape[0]
    return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators)])


def row_seed(seed: int, key: object) -> int:
    """A stable 63-bit seed for one row from a run seed and a row key (e.g. an example id)."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def make_generators(seeds: Sequence[int], device: torch.device | str) -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
