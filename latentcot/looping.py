"""How a looped model decodes: loops per token, fixed or with an adaptive exit per row and position.

A looped model applies one shared block of layers L times. At decoding time L may be overridden
(``loops``), and each position may stop early once successive iterations agree (``exit``):

- ``kl``: KL(p_l ‖ p_{l-1}) < epsilon, between the output distributions read out after
  iterations l and l-1 (the recurrent-depth criterion; its default epsilon is 5e-4);
- ``entropy``: |H(p_l) − H(p_{l-1})| < epsilon (nats);
- ``argmax``: the most likely token of p_l equals that of p_{l-1}.

A comparison is made after every iteration from the second on; a position exits after
iteration l once ``patience`` comparisons in a row passed and l >= ``min_loops``. Criteria are
pure functions of the read-out logits, so they are tested on constructed distributions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from latentcot.errors import InputError
from latentcot.validation import is_int, is_number, require

EXITS = ("none", "kl", "entropy", "argmax")
DEFAULT_EPSILON = {"kl": 5e-4, "entropy": 1e-3}


@dataclass(frozen=True)
class LoopConfig:
    loops: int | None = None  # iterations of the shared block per token (None = the model's own L);
    #                            with an exit rule, the most a position may take
    exit: str = "none"  # none | kl | entropy | argmax
    epsilon: float | None = None  # kl / entropy threshold (None = the criterion's default)
    patience: int = 1  # comparisons in a row that must pass before a position exits
    min_loops: int = 1  # never exit before this many iterations

    def __post_init__(self):
        require(self.exit in EXITS, f"unknown loop exit {self.exit!r}; valid: {', '.join(EXITS)}")
        require(
            self.loops is None or (is_int(self.loops) and self.loops >= 1),
            f"loops must be an integer >= 1, got {self.loops!r}",
        )
        require(
            is_int(self.patience) and self.patience >= 1, f"patience must be an integer >= 1, got {self.patience!r}"
        )
        require(
            is_int(self.min_loops) and self.min_loops >= 1, f"min_loops must be an integer >= 1, got {self.min_loops!r}"
        )
        require(
            self.loops is None or self.min_loops <= self.loops, f"min_loops {self.min_loops} exceeds loops {self.loops}"
        )
        if self.exit in DEFAULT_EPSILON:
            if self.epsilon is None:
                object.__setattr__(self, "epsilon", DEFAULT_EPSILON[self.exit])
            require(
                is_number(self.epsilon) and self.epsilon > 0, f"exit epsilon must be a number > 0, got {self.epsilon!r}"
            )
        else:
            require(self.epsilon is None, f"epsilon only applies to the kl and entropy exits, not {self.exit!r}")
        require(
            self.exit != "none" or (self.patience == 1 and self.min_loops == 1),
            "patience and min_loops only apply with an exit rule",
        )

    @property
    def adaptive(self) -> bool:
        return self.exit != "none"

    def as_dict(self) -> dict:
        return {
            "loops": self.loops,
            "exit": self.exit,
            "epsilon": self.epsilon,
            "patience": self.patience,
            "min_loops": self.min_loops,
        }

    def tag(self) -> str:
        """Short name for setting ids, e.g. ``loops8``, ``loops12-kl0.0005`` or ``loops-argmax2``."""
        parts = [f"loops{self.loops}" if self.loops is not None else "loops"]
        if self.exit == "argmax":
            parts.append(f"argmax{self.patience}")
        elif self.adaptive:
            parts.append(f"{self.exit}{self.epsilon:g}" + (f"p{self.patience}" if self.patience > 1 else ""))
        if self.min_loops > 1:
            parts.append(f"min{self.min_loops}")
        return "-".join(parts)


def parse_exit(spec: str, loops: int | None = None) -> LoopConfig:
    """``kl``, ``kl:5e-4``, ``entropy:1e-3``, ``argmax:3`` (patience 3) or the long form
    ``kl:epsilon=5e-4,patience=2,min_loops=2`` -> LoopConfig."""
    kind, _, rest = spec.strip().partition(":")
    values: dict = {}
    rest = rest.strip()
    if rest and "=" not in rest:  # the short form: the criterion's main number
        values["patience" if kind == "argmax" else "epsilon"] = rest
    elif rest:
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            if not eq or key.strip() not in ("epsilon", "patience", "min_loops"):
                raise InputError(
                    f"bad exit option {item.strip()!r} in {spec!r}; valid keys: epsilon, patience, min_loops"
                )
            values[key.strip()] = value.strip()
    try:
        typed = {k: (float(v) if k == "epsilon" else int(v)) for k, v in values.items()}
    except ValueError:
        raise InputError(f"bad number in loop exit {spec!r}") from None
    return LoopConfig(loops=loops, exit=kind, **typed)


def entropy_of(logp: torch.Tensor) -> torch.Tensor:
    """(...,) nats from log-probabilities (..., V)."""
    return -(logp.exp() * logp).sum(-1)


def agrees(cfg: LoopConfig, logp: torch.Tensor, prev_logp: torch.Tensor) -> torch.Tensor:
    """(...,) bool: iteration l's distribution is close enough to iteration l-1's. Inputs (..., V) log-probs."""
    if cfg.exit == "kl":
        return (logp.exp() * (logp - prev_logp)).sum(-1) < cfg.epsilon
    if cfg.exit == "entropy":
        return (entropy_of(logp) - entropy_of(prev_logp)).abs() < cfg.epsilon
    if cfg.exit == "argmax":
        return logp.argmax(-1) == prev_logp.argmax(-1)
    raise ValueError(f"no criterion for exit {cfg.exit!r}")


class ExitTracker:
    """Per-position exit state over the iterations of one forward; every tensor has the shape (B, T)."""

    def __init__(self, cfg: LoopConfig, max_loops: int, shape: tuple[int, ...], device):
        self.cfg, self.max_loops = cfg, max_loops
        self.done = torch.zeros(shape, dtype=torch.bool, device=device)  # exited: state frozen
        self.used = torch.full(shape, max_loops, dtype=torch.long, device=device)  # iterations applied
        self.streak = torch.zeros(shape, dtype=torch.long, device=device)  # passed comparisons in a row
        self.prev: torch.Tensor | None = None  # (B, T, V) log-probs

    def observe(self, iteration: int, logits: torch.Tensor) -> torch.Tensor:
        """Feed the read-out logits (B, T, V) after ``iteration`` (1-based); returns the positions
        that exit now (B, T) bool and marks them done."""
        logp = torch.log_softmax(logits.float(), dim=-1)
        newly = torch.zeros_like(self.done)
        if self.prev is not None:
            passed = agrees(self.cfg, logp, self.prev)
            self.streak = (self.streak + 1) * passed
            newly = ~self.done & (self.streak >= self.cfg.patience) & (iteration >= self.cfg.min_loops)
            self.used = torch.where(newly, iteration, self.used)
            self.done = self.done | newly
        self.prev = logp
        return newly


def loops_used(cfg: LoopConfig, logits_per_iteration: list[torch.Tensor]) -> torch.Tensor:
    """Iterations each position would take given its read-out logits after every iteration, (B, T)."""
    tracker = ExitTracker(
        cfg, len(logits_per_iteration), logits_per_iteration[0].shape[:-1], logits_per_iteration[0].device
    )
    for iteration, logits in enumerate(logits_per_iteration[:-1], start=1):  # the last one always stops
        tracker.observe(iteration, logits)
    return tracker.used
