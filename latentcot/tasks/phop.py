"""``phop``: p-hop induction over a sequence of symbols (the task of Sanford et al. 2024, used in
"Reasoning with Latent Thoughts: On the Power of Looped Transformers" to measure how reasoning
depth, not length, limits a model).

Definition (positions are 1-based). Given a sequence ``s_1 … s_n`` over an alphabet, the query
is the last symbol, at position ``i_0 = n``. One *hop* from position ``i`` finds the last earlier
occurrence of the current symbol, ``j = max{ j < i : s_j = s_i }``, and moves to the position
right after it, ``i' = j + 1`` (an induction-head step). The answer is ``s_{i_p}``, the symbol
reached after ``p`` hops.

The generator keeps only sequences in which every hop exists and moves (``j + 1 < i``; when
``s_{i-1} = s_i`` the hop would stay put and later hops would repeat it), so every example needs
exactly ``p`` distinct hops: ``p`` is the depth knob and the number of gold steps. Sequences
are uniform over those valid ones (rejection sampling).

Steps read ``hop 1: c at 24 -> d at 17``: the symbol and position before and after the hop.
The alphabet is the first ``alphabet`` letters of :data:`~latentcot.tasks.extract.SYMBOLS`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from latentcot.errors import InputError
from latentcot.tasks.base import GeneratorTask, Params, Problem
from latentcot.tasks.extract import SYMBOLS

_MAX_TRIES = 5_000


@dataclass(frozen=True)
class PHopParams(Params):
    """``n``: sequence length; ``p``: hops; ``alphabet``: number of distinct symbols."""

    task = "phop"
    n: int = 24
    p: int = 3
    alphabet: int = 4

    def __post_init__(self) -> None:
        self._require("p", 1, 256)
        self._require("n", self.p + 2, 4096)
        self._require("alphabet", 2, len(SYMBOLS))


def hop_path(sequence: str, p: int) -> list[int] | None:
    """Positions ``[i_0, …, i_p]`` (1-based) of the hops, or None when a hop is missing or
    stays put. ``sequence`` holds one character per symbol."""
    position = len(sequence)
    path = [position]
    for _ in range(p):
        previous = sequence.rfind(sequence[position - 1], 0, position - 1)  # 0-based j - 1
        if previous < 0 or previous + 2 == position:
            return None
        position = previous + 2
        path.append(position)
    return path


class PHopTask(GeneratorTask):
    name = "phop"
    domain = "multi-hop"
    description = "p-hop induction: from the last symbol, hop p times to the symbol after its previous occurrence"
    answer_kind = "symbol"
    params_type = PHopParams
    params: PHopParams

    def make(self, rng: random.Random) -> Problem:
        p = self.params
        letters = SYMBOLS[: p.alphabet]
        for _ in range(_MAX_TRIES):
            sequence = "".join(rng.choice(letters) for _ in range(p.n))
            path = hop_path(sequence, p.p)
            if path is not None:
                return self._problem(sequence, path)
        raise InputError(f"{self.spec}: almost no sequence allows {p.p} hops; increase n or decrease p or alphabet")

    def _problem(self, sequence: str, path: list[int]) -> Problem:
        steps = tuple(
            f"hop {k}: {sequence[a - 1]} at {a} -> {sequence[b - 1]} at {b}"
            for k, (a, b) in enumerate(zip(path, path[1:]), start=1)
        )
        question = (
            f"Sequence: {' '.join(sequence)}. Start at the last symbol and hop "
            f"{self.params.p} times; each hop moves to the symbol right after the "
            "previous occurrence of the current symbol. Which symbol do you reach?"
        )
        return Problem(
            question, sequence[path[-1] - 1], steps, {"sequence": sequence, "p": self.params.p, "positions": path}
        )
