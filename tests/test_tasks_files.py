"""Dataset files and prompt files: the three formats, COCONUT round trip, malformed input."""

from __future__ import annotations

import json

import pytest

from latentcot.errors import InputError
from latentcot.tasks import FileTask, load_task, read_examples, write_coconut_json
from latentcot.types import Example


def _jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def test_generated_prosqa_round_trips_through_coconut_json(tmp_path):
    original = load_task("prosqa").examples("test", 50, 7)
    path = tmp_path / "prosqa.json"
    write_coconut_json(original, path)
    records = json.loads(path.read_text())
    assert set(records[0]) >= {"question", "answer", "steps", "edges", "root", "target", "neg_target", "idx_to_symbol"}
    task = load_task(str(path))
    assert isinstance(task, FileTask) and task.format == "coconut"
    assert task.examples("test", None, 0) == original
    assert task.domain == "planning" and task.answer_kind == "entity"
    # the file prompts exactly like the generator (same domain template)
    assert [task.prompt(e) for e in original] == [load_task("prosqa").prompt(e) for e in original]


def test_coconut_file_without_ids_uses_positions_and_keeps_extra_fields(tmp_path):
    path = tmp_path / "gsm.json"
    path.write_text(
        json.dumps(
            [
                {"question": "2 + 3?", "answer": "5", "steps": ["<<2+3=5>>"], "source": "x"},
                {"question": "Is it so?", "answer": "True", "steps": [], "domain": "logic"},
            ]
        )
    )
    task = load_task(str(path))
    first, second = task.examples("valid", None, 3)
    assert first == Example("1", "2 + 3?", "5", ("<<2+3=5>>",), "generic", {"source": "x"})
    assert (second.id, second.domain) == ("2", "logic")
    assert task.domain == "generic" and task.answer_kind == "text"
    assert task.prompt(second).endswith("Question: Is it so?\nSolution:")
    assert "True or false" in task.prompt(second)  # the logic template's few-shot example
    assert "True or false" not in task.prompt(first)  # generic template


def test_gsm8k_jsonl(tmp_path):
    path = _jsonl(
        tmp_path / "gsm8k_test.jsonl",
        [
            {
                "question": "Ann has 3 boxes of 4 pens. How many pens?",
                "answer": "She has 3 * 4 = <<3*4=12>>12 pens.\n#### 12",
            },
            "",
            {"question": "What is 1,000 + 1?", "answer": "1000 + 1 = <<1000+1=1001>>1001\n#### 1,001"},
        ],
    )
    task = load_task(path)
    assert (task.format, task.domain, task.name, task.answer_kind) == ("gsm8k", "math-word", "gsm8k_test", "number")
    first, second = task.examples("test", None, 0)
    assert first.steps == ("She has 3 * 4 = 12 pens.",) and first.answer == "12"
    assert (first.id, second.id) == ("1", "3")  # 1-based line numbers
    assert "#### <number>" in task.prompt(first)
    extraction = task.extract("1000 + 1 = 1001\n#### 1001")
    assert extraction.strategy == "strict" and task.score(second, extraction.prediction)


def test_generic_jsonl_with_domains_ids_and_steps(tmp_path):
    path = _jsonl(
        tmp_path / "mixed.jsonl",
        [
            {
                "id": "a",
                "question": "Every x is a y. Tom is a x. Is Tom a y or z?",
                "answer": "Tom is a y.",
                "steps": ["Tom is a x.", "Every x is a y."],
                "domain": "planning",
            },
            {"id": 7, "question": "Which city?", "answer": "Paris", "domain": "geography", "level": 2},
            {"question": "Count?", "answer": 42},
        ],
    )
    task = load_task(path)
    a, b, c = task.examples("train", None, 0)
    assert task.format == "generic" and task.domain == "generic"
    assert (a.id, a.domain, a.steps) == ("a", "planning", ("Tom is a x.", "Every x is a y."))
    assert (b.id, b.domain, b.meta) == ("7", "geography", {"level": 2})
    assert (c.id, c.domain, c.answer) == ("3", "generic", "42")
    assert "<name> is a <category>" in task.prompt(a)
    assert "Think step by step" in task.prompt(b)  # unknown domain -> generic template
    assert task.examples("test", 2, 5) == [a, b]


def test_loading_is_stable_per_file_and_first_n(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{"question": f"q{i}", "answer": str(i)} for i in range(20)])
    task = load_task(path)
    assert [e.id for e in task.examples("test", 5, 0)] == ["1", "2", "3", "4", "5"]
    assert task.examples("test", 100, 0) == task.examples("valid", None, 9)
    assert len(task.examples("test", 0, 0)) == 0


@pytest.mark.parametrize(
    "lines,message,line",
    [
        (
            ['{"question": "a", "answer": "1"}', '{"question": "b", "answer": "2"', ""],
            "invalid JSON: Expecting ',' delimiter",
            2,
        ),
        (['{"question": "a", "answer": "1"}', "", '{"question": "b"}'], "missing field 'answer'", 3),
        (['{"answer": "1"}'], "missing field 'question'", 1),
        (['["question", "answer"]'], "expected a JSON object, got list", 1),
        (['{"question": "a", "answer": "1", "steps": "s"}'], "field 'steps' must be a list of strings", 1),
        (['{"question": "a", "answer": [1]}'], "field 'answer' must be a non-empty string or a number", 1),
        (['{"question": "", "answer": "1"}'], "field 'question' must be a non-empty string", 1),
        (['{"question": "a", "answer": "1", "domain": 3}'], "field 'domain' must be a non-empty string", 1),
        (['{"question": "a", "answer": "1", "id": 1.5}'], "field 'id' must be a string or an integer", 1),
        (
            ['{"id": "x", "question": "a", "answer": "1"}', '{"id": "x", "question": "b", "answer": "2"}'],
            "duplicate id 'x' (first at 1)",
            2,
        ),
        (
            ['{"question": "a", "answer": "r\\n#### 1"}', '{"question": "b", "answer": "2"}'],
            "GSM8K-format file: field 'answer' must be a string ending in '#### <final answer>'",
            2,
        ),
        (['{"question": "a", "answer": "r\\n####  "}'], "nothing after '####'", 1),
    ],
)
def test_malformed_jsonl_names_file_and_line(tmp_path, lines, message, line):
    path = _jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(InputError) as caught:
        load_task(path)
    assert caught.value.where == f"{path}:{line}"
    assert message in caught.value.message
    assert str(caught.value).startswith(f"{path}:{line}: ")


def test_malformed_coconut_json_names_the_line_of_the_bad_record(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(
        '[\n {"question": "a", "answer": "1"},\n {"question": "b",\n  "answer": "2"},\n'
        '\n {"question": "c",\n  "steps": []}\n]\n'
    )
    with pytest.raises(InputError) as caught:
        load_task(str(path))
    assert caught.value.where == f"{path}:6"
    assert caught.value.message == "record 3: missing field 'answer'"

    path.write_text('[\n {"question": "a",\n  "answer": }\n]')
    with pytest.raises(InputError) as caught:
        load_task(str(path))
    assert caught.value.where == f"{path}:3" and "invalid JSON: Expecting value" in caught.value.message

    path.write_text('{"question": "a", "answer": "1"}')
    with pytest.raises(InputError, match="must hold a list of records"):
        load_task(str(path))


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("empty.jsonl", "\n\n", "no examples in file"),
        ("empty.json", "[]", "no examples in file"),
        ("data.csv", "question,answer\n", "unsupported file type '.csv'; expected .json or .jsonl"),
        ("latin.jsonl", b"\xff\xfe{", "not UTF-8 text"),
    ],
)
def test_unusable_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(InputError) as caught:
        load_task(str(path))
    assert message in caught.value.message and caught.value.where == str(path)


def test_missing_file_and_unknown_task(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(InputError) as caught:
        load_task(missing)
    assert (caught.value.message, caught.value.where) == ("no such file", missing)
    with pytest.raises(InputError) as caught:
        load_task("additon:n=3")
    assert caught.value.message == (
        "unknown task 'additon:n=3'; valid tasks: addition, phop, igsm, "
        "prosqa, prontoqa (or a path to a .json / .jsonl file)"
    )
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(InputError, match="not a regular file"):
        read_examples(tmp_path / "dir.json")


# ----------------------------------------------------------------- prompt files


def test_user_prompt_file_changes_asked_and_parsed_format(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(
        json.dumps(
            {
                "template": "Q: {question} {{literal braces}}\nEnd with '{answer_format}'.\nA:",
                "answer_prefix": "Final:",
                "answer_format": "Final: <n>",
                "few_shot": [{"question": "1 + 1 =", "solution": "Final: 2"}],
                "example_template": "Q: {question}\nA: {solution}\n",
            }
        )
    )
    task = load_task("addition:n=2,digits=1", prompt_file=str(path))
    example = task.examples("test", 1, 0)[0]
    assert task.prompt(example) == (f"Q: {example.question} {{{{literal braces}}}}\nEnd with 'Final: <n>'.\nA:")
    assert task.extract(f"Final: {example.answer}").strategy == "strict"
    assert task.extract(f"Answer: {example.answer}").strategy == "flexible"
    file_task = load_task(
        _jsonl(tmp_path / "d.jsonl", [{"question": "{question}", "answer": "1"}]), prompt_file=str(path)
    )
    assert file_task.prompt(file_task.examples("test", 1, 0)[0]).startswith("Q: {question} ")


@pytest.mark.parametrize(
    "content,message,where_line",
    [
        ('{"template": "x",\n "answer_prefix": }', "invalid JSON in prompt file", 2),
        ('["template"]', "a prompt file must hold a JSON object", 1),
        (
            '{"template": "no placeholder", "answer_prefix": "A:", "answer_format": "A: x"}',
            "field 'template' must contain {question}",
            None,
        ),
        (
            '{"template": "{question}", "answer_format": "A: x"}',
            "field 'answer_prefix' must be a non-empty string",
            None,
        ),
        (
            '{"template": "{question}", "answer_prefix": "A:", "answer_format": "A: x", "shots": []}',
            "unknown key(s) shots; valid keys: template, answer_prefix, answer_format, few_shot",
            None,
        ),
        (
            '{"template": "{question}", "answer_prefix": "A:", "answer_format": "A: x", "few_shot": [{"q": 1}]}',
            "field 'few_shot' must be a list of {question, solution} strings",
            None,
        ),
        (
            '{"template": "{question}", "answer_prefix": "A:", "answer_format": "A: x", "stop": [""]}',
            "field 'stop' must be a list of strings",
            None,
        ),
    ],
)
def test_bad_prompt_files(tmp_path, content, message, where_line):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(InputError) as caught:
        load_task("addition", prompt_file=str(path))
    assert message in caught.value.message
    assert caught.value.where == (f"{path}:{where_line}" if where_line else str(path))
    with pytest.raises(InputError, match="no such file"):
        load_task("addition", prompt_file=str(tmp_path / "missing.json"))


def test_jsonl_lines_end_only_at_newline(tmp_path):
    # U+2028 and U+0085 may stand unescaped in a JSON string; CRLF line ends are accepted too.
    path = tmp_path / "d.jsonl"
    first = json.dumps({"question": "a\u2028b\x85c?", "answer": "1"}, ensure_ascii=False)
    path.write_text(
        first + "\r\n\r\n" + json.dumps({"question": "d?", "answer": 2}) + "\r\n", encoding="utf-8", newline=""
    )
    a, b = load_task(str(path)).examples("test", None, 0)
    assert (a.id, a.question) == ("1", "a\u2028b\x85c?")
    assert (b.id, b.answer) == ("3", "2")  # ids are the file's 1-based line numbers


def test_a_null_jsonl_line_is_not_an_object(tmp_path):
    path = _jsonl(tmp_path / "bad.jsonl", ['{"question": "a", "answer": "1"}', "", "null"])
    with pytest.raises(InputError) as caught:
        load_task(path)
    assert caught.value.where == f"{path}:3"
    assert caught.value.message == "expected a JSON object, got NoneType"
