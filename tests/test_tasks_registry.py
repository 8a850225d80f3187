"""The registry, task specs, and the shipped prompt templates."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources

import pytest

from latentcot.tasks import TASKS, Task, list_tasks, load_prompt_file, load_task, parse_task_spec
from latentcot.tasks.extract import extract_answer
from latentcot.tasks.io import PROMPTS_PACKAGE

DOMAINS = ("arithmetic", "multi-hop", "math-word", "planning", "logic", "generic")


def test_list_tasks_names_domains_and_one_line_descriptions():
    rows = list_tasks()
    assert [(name, domain) for name, domain, _ in rows] == [
        ("addition", "arithmetic"),
        ("phop", "multi-hop"),
        ("igsm", "math-word"),
        ("prosqa", "planning"),
        ("prontoqa", "logic"),
    ]
    for _, _, description in rows:
        assert "\n" not in description and description.strip()
    assert rows[0][2].endswith("[n=4,digits=3,reverse=0]")


def test_registry_is_read_only():
    with pytest.raises(TypeError):
        TASKS["mine"] = object  # type: ignore[index]


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("addition", ("addition", {})),
        ("addition:n=8,digits=3", ("addition", {"n": "8", "digits": "3"})),
        (" addition : n = 8 , ", ("addition", {"n": "8"})),
    ],
)
def test_parse_spec(spec, expected):
    assert parse_task_spec(spec) == expected


def test_spec_round_trips_and_parameters_apply():
    task = load_task("addition:n=8,digits=3")
    assert isinstance(task, Task)
    assert (task.name, task.spec, task.params.n) == ("addition", "addition:n=8,digits=3,reverse=0", 8)
    again = load_task(task.spec)
    assert again.examples("test", 5, 0) == task.examples("test", 5, 0)
    # parameters are part of the random stream: different parameters, different problems
    assert load_task("addition:n=8").examples("test", 5, 0) != load_task("addition").examples("test", 5, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.params.n = 3


@pytest.mark.parametrize("domain", DOMAINS)
def test_shipped_templates_load_and_their_few_shot_answers_are_strictly_extracted(domain):
    template = load_prompt_file(resources.files(PROMPTS_PACKAGE) / f"{domain}.json")
    assert json.loads((resources.files(PROMPTS_PACKAGE) / f"{domain}.json").read_text())["domain"] == domain
    assert template.answer_format.startswith(template.answer_prefix)
    rendered = template.render("WHAT?")
    assert rendered.endswith("Question: WHAT?\nSolution:")
    assert template.answer_format in rendered
    assert not any(f"{{{key}}}" in rendered for key in ("question", "few_shot", "answer_format"))
    for shot in template.few_shot:
        assert shot.question in rendered
        assert extract_answer(shot.solution, (template.answer_prefix,), "text").strategy == "strict"


@pytest.mark.parametrize(
    "spec,asked",
    [
        ("addition", "Answer: <number>"),
        ("phop", "Answer: <answer>"),
        ("igsm", "#### <number>"),
        ("prosqa", "Answer: <name> is a <category>."),
        ("prontoqa", "Answer: True or Answer: False"),
    ],
)
def test_each_task_prompt_asks_for_its_answer_format(spec, asked):
    task = load_task(spec)
    example = task.examples("test", 1, 0)[0]
    prompt = task.prompt(example)
    assert prompt.endswith(f"Question: {example.question}\nSolution:")
    assert asked in prompt
    assert task.stop == ("\nQuestion:",)


def test_few_shot_examples_follow_the_generators_own_format():
    """The shipped worked examples are in the exact format the generators produce, so a model
    shown them is asked for the chain that scoring and training use."""
    shot = load_prompt_file(resources.files(PROMPTS_PACKAGE) / "multi-hop.json").few_shot[0]
    task = load_task("phop:n=7,p=2,alphabet=3")
    problem = task._problem("bddbcdc", [7, 6, 4])
    assert shot.question == problem.question
    assert shot.solution == "\n".join(problem.steps) + f"\nAnswer: {problem.answer}"
