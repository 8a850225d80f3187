"""All file reading and writing of the tasks package: datasets, prompt templates, COCONUT export.

Task classes stay pure (they only compute); this module turns files into validated values and
reports every problem as an :class:`~latentcot.errors.InputError` naming ``file:line``.

Dataset formats (chosen by extension; a ``.jsonl`` file's flavour is detected from its first
record):

- ``.json`` — COCONUT: a list of ``{"question", "answer", "steps", ...}`` objects. Extra fields
  (a ProsQA graph: ``edges``, ``root``, ``target``, ``neg_target``, ``idx_to_symbol``) are kept
  in ``Example.meta``.
- ``.jsonl`` GSM8K — ``{"question", "answer": "<solution lines>\\n#### 42"}``: the final answer
  is the text after ``####``, the steps are the solution lines with calculator annotations
  (``<<6*7=42>>``) removed. Chosen when the first record has no ``steps`` and its answer
  contains ``####``.
- ``.jsonl`` generic — ``{"question", "answer", "steps"?, "domain"?, "id"?, ...}``.

In every format an optional ``id`` (string or integer) names the example, otherwise its 1-based
position (line for ``.jsonl``, index for ``.json``); an optional ``domain`` overrides the task's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jsonlines

from latentcot.errors import InputError
from latentcot.tasks.prompt import DEFAULT_EXAMPLE_TEMPLATE, FewShot, PromptTemplate
from latentcot.types import Example

PROMPTS_PACKAGE = "latentcot.prompts"  # the repository's prompts/ folder, installed as package data
FORMATS = ("coconut", "gsm8k", "generic")
DEFAULT_DOMAIN = {"coconut": "generic", "gsm8k": "math-word", "generic": "generic"}
_RESERVED = ("id", "question", "answer", "steps", "domain")
_CALCULATOR = re.compile(r"<<[^<>]*>>")
_PROMPT_KEYS = (
    "template",
    "answer_prefix",
    "answer_format",
    "few_shot",
    "example_template",
    "stop",
    "description",
    "domain",
)


@dataclass(frozen=True)
class LoadedFile:
    """The examples of one dataset file and what was learned about it while reading."""

    path: str
    format: str  # one of FORMATS
    examples: tuple[Example, ...]


# ---------------------------------------------------------------- datasets


def read_examples(path: str | Path) -> LoadedFile:
    """Read and validate a dataset file; raises InputError naming ``file:line`` on any problem."""
    path = Path(path)
    text = _read_text(path)
    if path.suffix == ".json":
        fmt, examples = "coconut", _coconut_examples(path, text)
    elif path.suffix == ".jsonl":
        fmt, examples = _jsonl_examples(path, text)
    else:
        raise InputError(f"unsupported file type {path.suffix!r}; expected .json or .jsonl", where=str(path))
    if not examples:
        raise InputError("no examples in file", where=str(path))
    return LoadedFile(str(path), fmt, tuple(examples))


def write_coconut_json(examples: Iterable[Example], path: str | Path) -> None:
    """Write examples as a COCONUT ``.json`` list; ``id``, ``domain`` and ``meta`` are kept as extra
    fields, so :func:`read_examples` gives back equal examples."""
    records = []
    for example in examples:
        clash = sorted(set(example.meta) & set(_RESERVED))
        if clash:
            raise ValueError(f"example {example.id}: meta keys {clash} clash with record fields")
        records.append(
            {
                "question": example.question,
                "answer": example.answer,
                "steps": list(example.steps),
                **example.meta,
                "id": example.id,
                "domain": example.domain,
            }
        )
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(records, handle, ensure_ascii=False, indent=1)
        handle.write("\n")


def _read_text(path: Path) -> str:
    if not path.exists():
        raise InputError("no such file", where=str(path))
    if not path.is_file():
        raise InputError("not a regular file", where=str(path))
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"not UTF-8 text ({err.reason} at byte {err.start})", where=str(path)) from None


def _json_document(path: Path, text: str, expected: type, invalid: str, wrong_type: str):
    """Parse a whole-file JSON document of type ``expected``; errors name file:line."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{invalid}: {err.msg}", where=f"{path}:{err.lineno}") from None
    if not isinstance(data, expected):
        raise InputError(wrong_type, where=f"{path}:1")
    return data


def _coconut_examples(path: Path, text: str) -> list[Example]:
    records = _json_document(path, text, list, "invalid JSON", "a COCONUT .json file must hold a list of records")
    examples, seen = [], {}
    for index, record in enumerate(records):
        try:
            examples.append(_example(record, str(index + 1), "generic", seen, index + 1))
        except _RecordError as err:
            where = f"{path}:{_line_of_element(text, index)}"
            raise InputError(f"record {index + 1}: {err}", where=where) from None
    return examples


def _jsonl_examples(path: Path, text: str) -> tuple[str, list[Example]]:
    # Only "\n" ends a JSON Lines line: str.splitlines would also split inside a string holding
    # U+2028 or U+0085, which JSON allows unescaped. A "\r" before it is JSON whitespace.
    numbered = [(lineno, line) for lineno, line in enumerate(text.split("\n"), start=1) if line.strip()]
    reader = jsonlines.Reader(line for _, line in numbered)
    fmt, examples, seen = None, [], {}
    for lineno, _ in numbered:  # the reader decodes the same lines in the same order, one per read
        where = f"{path}:{lineno}"
        try:
            # None is allowed here so that a `null` line gets the same message as any other
            # non-object ("expected a JSON object, got NoneType") from _example.
            record = reader.read(allow_none=True)
        except jsonlines.InvalidLineError as err:
            raise InputError(_invalid_json_line(err), where=where) from None
        if fmt is None:
            fmt = "gsm8k" if _looks_gsm8k(record) else "generic"
        try:
            if fmt == "gsm8k":
                record = _gsm8k_record(record)
            examples.append(_example(record, str(lineno), DEFAULT_DOMAIN[fmt], seen, lineno))
        except _RecordError as err:
            raise InputError(str(err), where=where) from None
    return fmt or "generic", examples


def _invalid_json_line(err: jsonlines.InvalidLineError) -> str:
    cause = err.__cause__
    if isinstance(cause, json.JSONDecodeError):
        return f"invalid JSON: {cause.msg} (column {cause.colno})"
    # Another ValueError from the decoder (an integer too long to convert); jsonlines' own text
    # would add a line count that skips blank lines, so quote the decoder instead.
    return f"invalid JSON: {cause or err}"


class _RecordError(Exception):
    """A problem inside one record; the caller adds the location."""


def _looks_gsm8k(record: Any) -> bool:
    return (
        isinstance(record, dict)
        and "steps" not in record
        and isinstance(record.get("answer"), str)
        and "####" in record["answer"]
    )


def _gsm8k_record(record: Any) -> dict:
    if not isinstance(record, dict):
        raise _RecordError("expected a JSON object")
    answer = record.get("answer")
    if not isinstance(answer, str) or "####" not in answer:
        raise _RecordError("GSM8K-format file: field 'answer' must be a string ending in '#### <final answer>'")
    solution, _, final = answer.rpartition("####")
    if not final.strip():
        raise _RecordError("GSM8K-format file: nothing after '####' in field 'answer'")
    steps = [_CALCULATOR.sub("", line).strip() for line in solution.splitlines()]
    return {**record, "answer": final.strip(), "steps": [s for s in steps if s]}


def _example(record: Any, position: str, domain: str, seen: dict, locator: int) -> Example:
    """One validated Example from a parsed record."""
    if not isinstance(record, dict):
        raise _RecordError(f"expected a JSON object, got {type(record).__name__}")
    for key in ("question", "answer"):
        if key not in record:
            raise _RecordError(f"missing field {key!r}")
    question, answer = record["question"], record["answer"]
    if not isinstance(question, str) or not question.strip():
        raise _RecordError("field 'question' must be a non-empty string")
    if isinstance(answer, bool):
        answer = str(answer)
    elif isinstance(answer, (int, float)):
        answer = str(answer)
    elif not isinstance(answer, str) or not answer.strip():
        raise _RecordError("field 'answer' must be a non-empty string or a number")
    steps = record.get("steps", [])
    if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
        raise _RecordError("field 'steps' must be a list of strings")
    example_id = record.get("id", position)
    if isinstance(example_id, bool) or not isinstance(example_id, (str, int)):
        raise _RecordError("field 'id' must be a string or an integer")
    example_id = str(example_id)
    if example_id in seen:
        raise _RecordError(f"duplicate id {example_id!r} (first at {seen[example_id]})")
    seen[example_id] = locator
    own_domain = record.get("domain", domain)
    if not isinstance(own_domain, str) or not own_domain.strip():
        raise _RecordError("field 'domain' must be a non-empty string")
    meta = {k: v for k, v in record.items() if k not in _RESERVED}
    return Example(example_id, question, answer, tuple(steps), own_domain, meta)


def _line_of_element(text: str, index: int) -> int:
    """1-based line where element ``index`` of the top-level JSON list starts (only called on
    errors, so the element-by-element scan costs nothing on good files)."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    for current in range(index + 1):
        while text[pos] in " \t\r\n,":
            pos += 1
        if current == index:
            break
        _, pos = decoder.raw_decode(text, pos)
    return text.count("\n", 0, pos) + 1


# ---------------------------------------------------------------- prompt templates


def domain_template(domain: str) -> PromptTemplate:
    """The shipped template for ``domain`` (``prompts/<domain>.json``), else the generic one."""
    shipped = resources.files(PROMPTS_PACKAGE)
    entry = shipped / f"{domain}.json"
    if not entry.is_file():
        entry = shipped / "generic.json"
    with resources.as_file(entry) as path:
        return load_prompt_file(path)


def load_prompt_file(path: str | Path) -> PromptTemplate:
    """Read a template file: a JSON object with ``template`` (containing ``{question}``),
    ``answer_prefix``, ``answer_format`` and optionally ``few_shot`` (list of ``{question,
    solution}``), ``example_template``, ``stop``, ``description``, ``domain``."""
    path = Path(path)
    data = _json_document(
        path, _read_text(path), dict, "invalid JSON in prompt file", "a prompt file must hold a JSON object"
    )
    try:
        return _template(data, str(path))
    except _RecordError as err:
        raise InputError(f"prompt file: {err}", where=str(path)) from None


def _template(data: dict, source: str) -> PromptTemplate:
    unknown = sorted(set(data) - set(_PROMPT_KEYS))
    if unknown:
        raise _RecordError(f"unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(_PROMPT_KEYS)}")
    for key in ("template", "answer_prefix", "answer_format"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise _RecordError(f"field {key!r} must be a non-empty string")
    if "{question}" not in data["template"]:
        raise _RecordError("field 'template' must contain {question}")
    example_template = data.get("example_template", DEFAULT_EXAMPLE_TEMPLATE)
    if not isinstance(example_template, str) or "{question}" not in example_template:
        raise _RecordError("field 'example_template' must be a string containing {question}")
    shots = data.get("few_shot", [])
    if not isinstance(shots, list) or not all(_is_shot(s) for s in shots):
        raise _RecordError("field 'few_shot' must be a list of {question, solution} strings")
    stop = data.get("stop", [])
    if not _is_strings(stop):
        raise _RecordError("field 'stop' must be a list of strings")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise _RecordError("field 'description' must be a string")
    return PromptTemplate(
        data["template"],
        data["answer_prefix"].strip(),
        data["answer_format"],
        tuple(FewShot(s["question"], s["solution"]) for s in shots),
        example_template,
        tuple(stop),
        description,
        source,
    )


def _is_shot(item: Any) -> bool:
    return (
        isinstance(item, dict)
        and set(item) == {"question", "solution"}
        and all(isinstance(v, str) for v in item.values())
    )


def _is_strings(items: Any) -> bool:
    return isinstance(items, list) and all(isinstance(s, str) and s for s in items)
