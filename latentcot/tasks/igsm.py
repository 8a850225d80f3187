"""``igsm``: synthetic GSM-style dependency problems with modular arithmetic.

``All values are mod 7. J#K := 6. A#B := E#I + J#K. E#I := 4. F#G := A#B * J#K. What is F#G?``

Variables (named ``X#Y``) are either given a constant or defined by one binary operation
(``+``, ``-``, ``*``, all mod ``mod``) on two other variables. The statements are shuffled, so
a solver must recover the dependency order itself (as in iGSM, "Physics of Language Models"
part 2.1). Modular values keep every number one or two tokens long, so difficulty comes from
the structure, not from big-number arithmetic.

Knobs:

- ``ops`` — operations needed for the answer: the queried variable's dependency closure holds
  exactly ``ops`` operations, and the gold steps evaluate them in a valid order, one per step
  (``A#B = E#I + J#K = 4 + 6 = 3``). More ops means longer chains (the DAG may branch and share
  intermediate results, so depth ≤ ops).
- ``distractors`` — extra statements the answer does not depend on (constants, or operations on
  any earlier variables).
- ``mod`` — the modulus.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from latentcot.tasks.base import GeneratorTask, Params, Problem

NAMES = tuple(f"{a}#{b}" for a in string.ascii_uppercase for b in string.ascii_uppercase)
OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@dataclass(frozen=True)
class IGSMParams(Params):
    """``ops``: operations the answer needs; ``distractors``: irrelevant statements; ``mod``."""

    task = "igsm"
    ops: int = 4
    distractors: int = 2
    mod: int = 7

    def __post_init__(self) -> None:
        self._require("ops", 1, 64)
        self._require("distractors", 0, 64)
        self._require("mod", 2, 1000)


class _Builder:
    """Grows one problem's variables; holds only per-problem state."""

    def __init__(self, rng: random.Random, params: IGSMParams):
        self.rng, self.mod = rng, params.mod
        self.names = iter(rng.sample(NAMES, 3 * params.ops + params.distractors + 2))
        self.value: dict[str, int] = {}
        self.definition: dict[str, tuple[str, str, str] | None] = {}

    def constant(self) -> str:
        name = next(self.names)
        self.value[name], self.definition[name] = self.rng.randrange(self.mod), None
        return name

    def operation(self, a: str, b: str) -> str:
        name, op = next(self.names), self.rng.choice(tuple(OPERATIONS))
        self.value[name] = OPERATIONS[op](self.value[a], self.value[b]) % self.mod
        self.definition[name] = (a, op, b)
        return name

    def needed(self, ops: int) -> list[str]:
        """Build ``ops`` operations that all feed the last one; returns them in creation order.

        ``pending`` holds operations no later one uses yet; each new operation takes 0–2 of them
        as operands, as many as needed for the rest to still be able to consume them all (each
        later operation removes at most one net, the last removes two).
        """
        pending: list[str] = []
        made: list[str] = []
        for t in range(ops):
            left = ops - t - 1
            low = len(pending) if left == 0 else max(0, len(pending) - left)
            take = self.rng.randint(low, min(2, len(pending))) if left else low
            operands = self.rng.sample(pending, take)
            for name in operands:
                pending.remove(name)
            while len(operands) < 2:
                reusable = [n for n in self.value if n not in pending and n not in operands]
                if reusable and self.rng.random() < 0.5:
                    operands.append(self.rng.choice(reusable))
                else:
                    operands.append(self.constant())
            self.rng.shuffle(operands)
            made.append(self.operation(*operands))
            if left:
                pending.append(made[-1])
        return made

    def distractor(self) -> None:
        existing = list(self.value)
        if len(existing) < 2 or self.rng.random() < 0.3:
            self.constant()
        else:
            self.operation(*self.rng.sample(existing, 2))

    def statement(self, name: str) -> str:
        d = self.definition[name]
        return f"{name} := {self.value[name]}." if d is None else f"{name} := {d[0]} {d[1]} {d[2]}."

    def step(self, name: str) -> str:
        a, op, b = self.definition[name]
        return f"{name} = {a} {op} {b} = {self.value[a]} {op} {self.value[b]} = {self.value[name]}"


class IGSMTask(GeneratorTask):
    name = "igsm"
    domain = "math-word"
    description = "synthetic GSM-style variable-dependency problems, mod arithmetic, shuffled statements"
    answer_kind = "number"
    params_type = IGSMParams
    params: IGSMParams

    def make(self, rng: random.Random) -> Problem:
        p = self.params
        build = _Builder(rng, p)
        needed = build.needed(p.ops)
        for _ in range(p.distractors):
            build.distractor()
        statements = [build.statement(name) for name in build.value]
        rng.shuffle(statements)
        query = needed[-1]
        question = f"All values are mod {p.mod}. {' '.join(statements)} What is {query}?"
        return Problem(
            question,
            str(build.value[query]),
            tuple(build.step(n) for n in needed),
            {"query": query, "mod": p.mod, "depth": _depth(build.definition, query)},
        )


def _depth(definition: dict, name: str) -> int:
    """Longest chain of operations ending at ``name``."""
    memo: dict[str, int] = {}

    def depth(node: str) -> int:
        if node not in memo:
            d = definition[node]
            memo[node] = 0 if d is None else 1 + max(depth(d[0]), depth(d[2]))
        return memo[node]

    return depth(name)
