"""Finding tasks by name: the registry, ``name:key=value,...`` specs, and dataset paths.

The registry is built once from a static tuple of classes and is read-only.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from latentcot.errors import InputError
from latentcot.tasks.arithmetic import AdditionTask
from latentcot.tasks.base import GeneratorTask, Task
from latentcot.tasks.files import FileTask
from latentcot.tasks.igsm import IGSMTask
from latentcot.tasks.io import load_prompt_file, read_examples
from latentcot.tasks.phop import PHopTask
from latentcot.tasks.prontoqa import ProntoQATask
from latentcot.tasks.prosqa import ProsQATask

_CLASSES: tuple[type[GeneratorTask], ...] = (
    AdditionTask,
    PHopTask,
    IGSMTask,
    ProsQATask,
    ProntoQATask,
)
TASKS: Mapping[str, type[GeneratorTask]] = MappingProxyType({c.name: c for c in _CLASSES})
FILE_SUFFIXES = (".json", ".jsonl")


def list_tasks() -> list[tuple[str, str, str]]:
    """(name, domain, one-line description with the parameter defaults) per registered task."""
    return [(c.name, c.domain, f"{c.description} [{c.params_type().canonical()}]") for c in _CLASSES]


def parse_task_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"addition:n=8,digits=3"`` → ``("addition", {"n": "8", "digits": "3"})``."""
    name, _, rest = spec.strip().partition(":")
    params: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = (s.strip() for s in item.partition("="))
        if not sep or not key or not value:
            raise InputError(f"bad task parameter {item!r} in {spec!r}; expected key=value")
        if key in params:
            raise InputError(f"task parameter {key!r} given twice in {spec!r}")
        params[key] = value
    return name.strip(), params


def load_task(spec: str, prompt_file: str | None = None) -> Task:
    """A registered task (``name`` or ``name:key=value,...``) or a dataset file (``.json`` /
    ``.jsonl`` path); ``prompt_file`` replaces the domain template. Bad input raises InputError."""
    prompt = load_prompt_file(prompt_file) if prompt_file else None
    if spec.partition(":")[0].strip() in TASKS:
        name, params = parse_task_spec(spec)
        cls = TASKS[name]
        return cls(cls.params_type.parse(params), prompt)
    path = Path(spec)
    if path.suffix in FILE_SUFFIXES or path.exists():
        return FileTask(read_examples(path), prompt)
    raise InputError(
        f"unknown task {spec!r}; valid tasks: {', '.join(TASKS)} (or a path to a {' / '.join(FILE_SUFFIXES)} file)"
    )
