"""``addition``: n-ary addition of d-digit numbers, with running partial sums as the gold chain.

``315 + 120 + 045 + 824 =`` → ``1304``; steps ``315 + 120 = 435``, ``435 + 045 = 480``,
``480 + 824 = 1304``. Operands are zero-padded to ``digits`` so every question of a parameter
set has the same shape; partial sums are written without padding.

Depth knobs: ``n`` numbers need ``n - 1`` steps; ``digits`` lengthens every number (and the
carries a model must track).

``reverse=1`` writes every number — operands, partial sums and the answer — least-significant
digit first (``1304`` becomes ``4031``). Small models trained from scratch learn addition much
faster that way because each output digit then depends only on digits already produced. The
answer is then compared as a digit string (the ``digits`` kind), since leading zeros matter.

``shuffle=1`` adds the operands in a random order (drawn per problem): ``315 + 120 + 045 + 824 =``
may be solved ``045 + 824 = 869``, ``869 + 315 = 1184``, ``1184 + 120 = 1304``. Every order is
correct, so a model trained on such chains meets *equivalent forks*: at the start of each step it
may pick any operand not yet added, and its next-token entropy there is high (≈ log of the
operands left) although sampling any of them loses nothing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from latentcot.tasks.base import GeneratorTask, Params, Problem


@dataclass(frozen=True)
class AdditionParams(Params):
    """``n``: how many numbers (2–64); ``digits``: digits per number (1–18); ``reverse``: 0/1;
    ``shuffle``: 0/1 (1: the chain adds the operands in a random order)."""

    task = "addition"
    added_later = ("shuffle",)
    n: int = 4
    digits: int = 3
    reverse: int = 0
    shuffle: int = 0

    def __post_init__(self) -> None:
        self._require("n", 2, 64)
        self._require("digits", 1, 18)
        self._require("reverse", 0, 1)
        self._require("shuffle", 0, 1)


class AdditionTask(GeneratorTask):
    name = "addition"
    domain = "arithmetic"
    description = "n-ary addition of d-digit numbers; steps are running partial sums"
    params_type = AdditionParams
    params: AdditionParams

    def __init__(self, params: AdditionParams | None = None, prompt=None):
        super().__init__(params, prompt)
        self.answer_kind = "digits" if self.params.reverse else "number"

    def make(self, rng: random.Random) -> Problem:
        p = self.params
        numbers = [rng.randrange(10**p.digits) for _ in range(p.n)]
        operands = [self._write(x, p.digits) for x in numbers]
        order = list(range(p.n))
        if p.shuffle:  # drawn after the numbers, so shuffle=0 and shuffle=1 share their questions
            rng.shuffle(order)
        chain = [numbers[i] for i in order]
        steps, total, left = [], chain[0], operands[order[0]]
        for number, operand in zip(chain[1:], [operands[i] for i in order[1:]]):
            total += number
            steps.append(f"{left} + {operand} = {self._write(total)}")
            left = self._write(total)
        return Problem(
            question=" + ".join(operands) + " =",
            answer=self._write(total),
            steps=tuple(steps),
            meta={"numbers": numbers, "total": total},
        )

    def _write(self, value: int, width: int = 0) -> str:
        text = str(value).zfill(width)
        return text[::-1] if self.params.reverse else text
