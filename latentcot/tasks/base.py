"""The Task contract and what the synthetic generators share.

A :class:`Task` hands the engine problems (:meth:`Task.examples`), renders them into prompts
(:meth:`Task.prompt`), pulls an answer out of a completion (:meth:`Task.extract`) and judges it
(:meth:`Task.score`). Only :mod:`latentcot.tasks.io` reads files (datasets, and prompt templates from
the package or ``--prompt``), once, when a task is built; after that a task's methods never touch files.

Generators (:class:`GeneratorTask`) are deterministic functions of (task, parameters, split,
seed). Splits are kept disjoint by *content*: every problem belongs to exactly one split,
decided by a hash of its question text (80 % train, 10 % valid, 10 % test), and a split's
stream simply skips problems that belong elsewhere. So no seed of ``train`` can ever produce a
``test`` question, which per-split seeds alone would not guarantee.
"""

from __future__ import annotations

import abc
import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from latentcot.errors import InputError
from latentcot.tasks import extract as answers
from latentcot.tasks.io import domain_template
from latentcot.tasks.prompt import PromptTemplate
from latentcot.types import Example, Extraction
from latentcot.validation import is_int, require

SPLITS = ("train", "valid", "test")
DEFAULT_N = 500  # examples per split when n is None
_SPLIT_BUCKETS = {"train": range(0, 8), "valid": range(8, 9), "test": range(9, 10)}
_MAX_SKIPS = 2_000  # consecutive problems of other splits before giving up


def split_of(question: str) -> str:
    """The split a question belongs to, from a stable hash of its text."""
    bucket = int.from_bytes(hashlib.blake2b(question.encode(), digest_size=8).digest(), "big") % 10
    return next(name for name, buckets in _SPLIT_BUCKETS.items() if bucket in buckets)


def check_split(split: str, n: int | None) -> None:
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise InputError(f"number of examples must be a non-negative integer, got {n!r}")


class Task(abc.ABC):
    """A source of problems plus the rules to prompt, extract and score them."""

    name: str = ""
    domain: str = "generic"
    description: str = ""
    answer_kind: str = "text"  # see latentcot.tasks.extract.KINDS

    def __init__(self, templates: Mapping[str, PromptTemplate], override: PromptTemplate | None):
        """``templates`` maps each domain this task renders to its template; ``override`` (a
        user's prompt file) replaces all of them."""
        self._templates = dict(templates)
        self._override = override
        used = [override] if override else list(self._templates.values())
        self._prefixes = tuple(sorted({t.answer_prefix for t in used}))

    @abc.abstractmethod
    def examples(self, split: str, n: int | None, seed: int) -> list[Example]:
        """The first ``n`` problems of ``split`` (all, or a default number, when n is None)."""

    @property
    def spec(self) -> str:
        """The string that :func:`latentcot.tasks.load_task` turns back into this task."""
        return self.name

    @property
    def stop(self) -> tuple[str, ...]:
        """Stop strings suggested by the template(s), e.g. the start of a next question."""
        return tuple(s for t in self._all_templates() for s in t.stop)

    def template_for(self, example: Example) -> PromptTemplate:
        if self._override is not None:
            return self._override
        return self._templates.get(example.domain) or self._templates[self.domain]

    def prompt(self, example: Example) -> str:
        """The example's question rendered with its domain's template."""
        return self.template_for(example).render(example.question)

    def extract(self, completion: str) -> Extraction:
        """The prediction in a completion, and the named strategy that found it."""
        return answers.extract_answer(completion, self._prefixes, self.answer_kind)

    def score(self, example: Example, prediction: str | None) -> bool:
        """Exact match of prediction and gold answer after normalisation for the answer kind."""
        return answers.matches(example.answer, prediction, self.answer_kind)

    def _all_templates(self) -> list[PromptTemplate]:
        return [self._override] if self._override else list(self._templates.values())


@dataclass(frozen=True)
class Params:
    """Base of the frozen, validated parameter sets; every field is an ``int``.

    Subclasses set ``task`` and check ranges in ``__post_init__`` with :meth:`_require`.
    """

    task: ClassVar[str] = ""
    # Parameters added after a task first shipped: written into the spec only when they differ from
    # their default, so the spec of an existing run (which seeds every problem it generates) and the
    # problems themselves stay what they were.
    added_later: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def parse(cls, raw: Mapping[str, str]) -> Params:
        """Build from ``key=value`` strings (the CLI's ``name:key=value,...``)."""
        valid = [f.name for f in fields(cls)]
        values: dict[str, int] = {}
        for key, text in raw.items():
            if key not in valid:
                raise InputError(f"unknown parameter {key!r} for task {cls.task}; valid keys: {', '.join(valid)}")
            try:
                values[key] = int(text)
            except ValueError:
                raise InputError(f"bad value for {cls.task}:{key}: {text!r} is not an integer") from None
        return cls(**values)

    def canonical(self) -> str:
        """``key=value,...`` for every field (``added_later`` ones only when set), in declaration order."""
        shown = [f for f in fields(self) if f.name not in self.added_later or getattr(self, f.name) != f.default]
        return ",".join(f"{f.name}={getattr(self, f.name)}" for f in shown)

    def _require(self, key: str, low: int, high: int) -> None:
        value = getattr(self, key)
        require(
            is_int(value) and low <= value <= high,
            f"bad value for {self.task}:{key}: {value!r}; expected an integer from {low} to {high}",
        )


@dataclass(frozen=True)
class Problem:
    """What a generator makes before it becomes an Example (the id depends on the split)."""

    question: str
    answer: str
    steps: tuple[str, ...]
    meta: Mapping[str, Any]


class GeneratorTask(Task):
    """A task that makes its problems from a seeded random stream."""

    params_type: ClassVar[type[Params]] = Params

    def __init__(self, params: Params | None = None, prompt: PromptTemplate | None = None):
        self.params = params if params is not None else self.params_type()
        if not isinstance(self.params, self.params_type):
            raise TypeError(f"{self.name} expects {self.params_type.__name__}")
        super().__init__({self.domain: domain_template(self.domain)} if prompt is None else {}, prompt)

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.params.canonical()}"

    def examples(self, split: str, n: int | None, seed: int) -> list[Example]:
        """Deterministic in (parameters, split, seed); ``examples(s, k, seed)`` is a prefix of
        ``examples(s, k + m, seed)``."""
        check_split(split, n)
        count = DEFAULT_N if n is None else n
        rng = random.Random(f"{self.spec}|{split}|{seed}")
        out: list[Example] = []
        skipped = 0
        while len(out) < count:
            problem = self.make(rng)
            if split_of(problem.question) != split:
                skipped += 1
                if skipped > _MAX_SKIPS:
                    raise InputError(
                        f"{self.spec}: these parameters allow too few distinct problems to fill the {split} split"
                    )
                continue
            skipped = 0
            out.append(
                Example(
                    f"{self.name}-{split}-{len(out)}",
                    problem.question,
                    problem.answer,
                    problem.steps,
                    self.domain,
                    problem.meta,
                )
            )
        return out

    @abc.abstractmethod
    def make(self, rng: random.Random) -> Problem:
        """One random problem drawn from ``rng`` (the only source of randomness)."""
