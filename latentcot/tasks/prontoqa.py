"""``prontoqa``: ProntoQA-style true/false questions answered by a chain of syllogisms.

``Every bampus is a glorpus. Every glorpus is not sour. Every zumpus is sour. Max is a
bampus. True or false: Max is sour.`` → ``False``.

The person belongs to the first of a chain of made-up categories c0 → c1 → … ; only the last
category carries the queried property (positively or negated). Answering takes ``hops`` rule
applications — ``hops - 1`` "Every c_i is a c_{i+1}" steps, then the property rule — and the gold
steps list each derived fact (``Max is a c1.``, …, ``Max is not sour.``), so ``hops`` is the
depth knob and the number of steps. ProntoQA's common setting is 5 hops, the default here.

``distractors`` adds a second chain of that many side categories whose last one states the
*opposite* property ("Every zumpus is sour."). The person is in none of them, so the answer
cannot be read off the property facts without following the chain from the person; the side
chain hangs off nothing in the person's chain, so the facts never contradict each other. With
``distractors=0`` the only property fact gives the answer away; keep it above zero for
experiments about reasoning.

Facts are shuffled; the answer is ``True`` or ``False`` (balanced in expectation).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from latentcot.tasks.base import GeneratorTask, Params, Problem
from latentcot.tasks.words import ADJECTIVES, CONCEPTS, PEOPLE


@dataclass(frozen=True)
class ProntoQAParams(Params):
    """``hops``: rule applications needed (chain length); ``distractors``: side-chain length."""

    task = "prontoqa"
    hops: int = 5
    distractors: int = 2

    def __post_init__(self) -> None:
        self._require("hops", 1, 64)
        self._require("distractors", 0, 64)


def _is(positive: bool, adjective: str) -> str:
    return adjective if positive else f"not {adjective}"


class ProntoQATask(GeneratorTask):
    name = "prontoqa"
    domain = "logic"
    description = "ProntoQA-style true/false syllogism chains (default 5 hops) with distractor categories"
    answer_kind = "boolean"
    params_type = ProntoQAParams
    params: ProntoQAParams

    def make(self, rng: random.Random) -> Problem:
        p = self.params
        words = rng.sample(CONCEPTS, p.hops + p.distractors)
        chain, side = words[: p.hops], words[p.hops :]
        person, adjective = rng.choice(PEOPLE), rng.choice(ADJECTIVES)
        holds, asked = rng.random() < 0.5, rng.random() < 0.5  # fact polarity, query polarity
        facts = [f"Every {a} is a {b}." for a, b in zip(chain, chain[1:])]
        facts.append(f"Every {chain[-1]} is {_is(holds, adjective)}.")
        facts += [f"Every {a} is a {b}." for a, b in zip(side, side[1:])]
        if side:
            facts.append(f"Every {side[-1]} is {_is(not holds, adjective)}.")
        rng.shuffle(facts)
        facts.append(f"{person} is a {chain[0]}.")
        question = " ".join(facts) + f" True or false: {person} is {_is(asked, adjective)}."
        steps = tuple(f"{person} is a {c}." for c in chain[1:])
        steps += (f"{person} is {_is(holds, adjective)}.",)
        meta = {"chain": chain, "property": adjective, "holds": holds}
        return Problem(question, "True" if holds == asked else "False", steps, meta)
