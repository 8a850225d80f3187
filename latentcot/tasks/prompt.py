"""Prompt templates: plain data (``prompts/<domain>.json``) rendered around a question.

A template states how the model must give its final answer (``answer_format``, shown to the
model) and the literal marker that starts that answer (``answer_prefix``), which the strict
extraction strategy looks for. Keeping both in one file means a user's own template
(``--prompt FILE``) changes the asked format and the parsed format together.

Placeholders are substituted in a single pass, so a question that happens to contain
``{question}`` or braces is inserted verbatim.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_EXAMPLE_TEMPLATE = "Question: {question}\nSolution: {solution}\n\n"
_PLACEHOLDER = re.compile(r"\{(question|solution|few_shot|answer_format)\}")


@dataclass(frozen=True)
class FewShot:
    """One worked example: the question and the full solution text, final answer line included."""

    question: str
    solution: str


@dataclass(frozen=True)
class PromptTemplate:
    """A validated template (see :func:`latentcot.tasks.io.load_prompt_file` for the file format)."""

    template: str  # contains {question}; may contain {few_shot}, {answer_format}
    answer_prefix: str  # e.g. "Answer:" or "####"
    answer_format: str  # e.g. "Answer: <number>"
    few_shot: tuple[FewShot, ...] = ()
    example_template: str = DEFAULT_EXAMPLE_TEMPLATE  # {question}, {solution}
    stop: tuple[str, ...] = ()  # strings after which generation may stop
    description: str = ""
    source: str = ""  # the file it was read from

    def render(self, question: str) -> str:
        """The full prompt for ``question``."""
        shots = "".join(
            _fill(self.example_template, {"question": s.question, "solution": s.solution}) for s in self.few_shot
        )
        return _fill(self.template, {"question": question, "few_shot": shots, "answer_format": self.answer_format})


def _fill(text: str, values: dict[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)
