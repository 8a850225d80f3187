"""Tasks backed by a dataset file (COCONUT ``.json``, GSM8K or generic ``.jsonl``).

A file has no splits: every split returns the file's examples in file order, first ``n``, and
the seed is ignored, so evaluating "test" on a file means evaluating the file.

The answer kind (how answers are extracted and compared) is inferred from the gold answers:
numbers, True/False, "X is a Y." sentences (ProsQA), otherwise free text. Each example is
prompted with the template of its own domain (unknown domains use the generic template).
"""

from __future__ import annotations

from pathlib import Path

from latentcot.tasks.base import Task, check_split
from latentcot.tasks.extract import infer_kind
from latentcot.tasks.io import DEFAULT_DOMAIN, LoadedFile, domain_template
from latentcot.tasks.prompt import PromptTemplate
from latentcot.types import Example


class FileTask(Task):
    """The examples of one file, validated when the task is made."""

    def __init__(self, loaded: LoadedFile, prompt: PromptTemplate | None = None):
        self.path = loaded.path
        self.format = loaded.format
        self._examples = loaded.examples
        self.name = Path(loaded.path).stem
        domains = sorted({e.domain for e in loaded.examples})
        self.domain = domains[0] if len(domains) == 1 else DEFAULT_DOMAIN[loaded.format]
        self.description = f"{len(self._examples)} examples from {loaded.path} ({loaded.format} format)"
        self.answer_kind = infer_kind(e.answer for e in loaded.examples)
        templates = {} if prompt else {d: domain_template(d) for d in {*domains, self.domain}}
        super().__init__(templates, prompt)

    @property
    def spec(self) -> str:
        return self.path

    def examples(self, split: str, n: int | None, seed: int) -> list[Example]:
        """The file's first ``n`` examples (all when n is None), whatever the split and seed."""
        check_split(split, n)
        return list(self._examples if n is None else self._examples[:n])
