"""A character-level tokenizer over exactly the characters a task and its prompt use.

Built with the ``tokenizers`` library (via :func:`latentcot.zoo.tiny.char_tokenizer`) and saved
as an HF ``PreTrainedTokenizerFast``, so ``AutoTokenizer.from_pretrained(model_dir)`` loads it.
Special tokens: ``<pad> <unk> <bos> <eos>`` and the thought markers ``<bot> <eot>``.
"""
from __future__ import annotations

import string
from typing import Iterable

from transformers import PreTrainedTokenizerFast

from latentcot.tasks import Task
from latentcot.types import Example
from latentcot.zoo.tiny import THOUGHT_MARKERS, char_tokenizer

ALWAYS = string.digits + " \n"   # every model can at least write numbers and line breaks
SCAN_EXAMPLES = 2000             # train examples scanned for characters


def texts_of(task: Task, examples: Iterable[Example], answer_prefix: str) -> Iterable[str]:
    """Every text a model of ``task`` reads or writes: prompts, steps, answers, the answer line."""
    yield answer_prefix
    for example in examples:
        yield task.prompt(example)
        yield from example.steps
        yield example.answer


def task_alphabet(task: Task, answer_prefix: str, n: int = SCAN_EXAMPLES, seed: int = 0) -> str:
    """The sorted characters of ``n`` train examples of ``task`` (with their prompts)."""
    chars = set(ALWAYS)
    for text in texts_of(task, task.examples("train", n, seed), answer_prefix):
        chars.update(text)
    return "".join(sorted(chars))


def task_tokenizer(task: Task, answer_prefix: str, n: int = SCAN_EXAMPLES,
                   seed: int = 0) -> PreTrainedTokenizerFast:
    """One token per character the task uses, plus the special tokens and thought markers."""
    tokenizer = char_tokenizer(task_alphabet(task, answer_prefix, n, seed), THOUGHT_MARKERS)
    tokenizer.padding_side = "left"  # what the decoding engine expects
    return tokenizer
