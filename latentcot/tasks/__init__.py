"""Reasoning tasks: synthetic generators with controllable depth, dataset loaders, prompts, scoring.

``load_task(spec)`` gives a :class:`Task` for a registered name (``addition``, ``phop``,
``igsm``, ``prosqa``, ``prontoqa``; parameters as ``name:key=value,...``) or a ``.json`` /
``.jsonl`` file; ``list_tasks()`` describes the registered ones.
"""

from latentcot.tasks.base import SPLITS, GeneratorTask, Params, Task
from latentcot.tasks.extract import KINDS, STRATEGIES, normalize
from latentcot.tasks.files import FileTask
from latentcot.tasks.io import load_prompt_file, read_examples, write_coconut_json
from latentcot.tasks.prompt import PromptTemplate
from latentcot.tasks.registry import TASKS, list_tasks, load_task, parse_task_spec

__all__ = [
    "KINDS",
    "SPLITS",
    "STRATEGIES",
    "TASKS",
    "FileTask",
    "GeneratorTask",
    "Params",
    "PromptTemplate",
    "Task",
    "list_tasks",
    "load_prompt_file",
    "load_task",
    "normalize",
    "parse_task_spec",
    "read_examples",
    "write_coconut_json",
]
