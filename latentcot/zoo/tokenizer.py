"""A tokenizer over exactly what a task and its prompt use: one token per character (``char``,
right for arithmetic, where digits must stay separate) or per word piece (``word``, right for
graph and logic tasks, whose made-up words a char-level model must copy letter by letter).

Built with the ``tokenizers`` library (via :mod:`latentcot.zoo.tiny`) and saved as an HF
``PreTrainedTokenizerFast``, so ``AutoTokenizer.from_pretrained(model_dir)`` loads it.
Special tokens: ``<pad> <unk> <bos> <eos>`` and the thought markers ``<bot> <eot>``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable

from transformers import PreTrainedTokenizerFast

from latentcot.tasks import Task
from latentcot.types import Example
from latentcot.zoo.settings import TOKENIZER_KINDS
from latentcot.zoo.tiny import THOUGHT_MARKERS, WORD_PIECE, char_tokenizer, word_tokenizer

ALWAYS = string.digits + " \n"  # every model can at least write numbers and line breaks
SCAN_EXAMPLES = 2000  # train examples scanned for characters / word pieces
KINDS = TOKENIZER_KINDS


def texts_of(task: Task, examples: Iterable[Example], answer_prefix: str) -> Iterable[str]:
    """Every text a model of ``task`` reads or writes: prompts, steps, answers, the answer line."""
    yield answer_prefix
    for example in examples:
        yield task.prompt(example)
        yield from example.steps
        yield example.answer


def task_alphabet(task: Task, answer_prefix: str, n: int | None = SCAN_EXAMPLES, seed: int = 0) -> str:
    """The sorted characters of ``n`` train examples of ``task`` (with their prompts)."""
    chars = set(ALWAYS)
    for text in texts_of(task, task.examples("train", n, seed), answer_prefix):
        chars.update(text)
    return "".join(sorted(chars))


def task_word_pieces(task: Task, answer_prefix: str, n: int | None = SCAN_EXAMPLES, seed: int = 0) -> set[str]:
    """The word pieces of ``n`` train examples of ``task`` (with their prompts), and every character
    of ``ALWAYS`` with and without a leading space."""
    pieces = {*ALWAYS, *(" " + c for c in ALWAYS.strip())}
    for text in texts_of(task, task.examples("train", n, seed), answer_prefix):
        pieces.update(re.findall(WORD_PIECE, text))
    return pieces


def task_tokenizer(
    task: Task, answer_prefix: str, n: int | None = SCAN_EXAMPLES, seed: int = 0, kind: str = "char"
) -> PreTrainedTokenizerFast:
    """One token per character (or word piece) the task uses, plus special tokens and thought markers."""
    if kind == "word":
        tokenizer = word_tokenizer(task_word_pieces(task, answer_prefix, n, seed), THOUGHT_MARKERS)
    else:
        tokenizer = char_tokenizer(task_alphabet(task, answer_prefix, n, seed), THOUGHT_MARKERS)
    tokenizer.padding_side = "left"  # what the decoding engine expects
    return tokenizer
