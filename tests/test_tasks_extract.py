"""Answer extraction and scoring: named strategies, normalisation, and fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latentcot.tasks import load_task
from latentcot.tasks.extract import (
    KINDS,
    SYMBOLS,
    extract_answer,
    infer_kind,
    matches,
    normalize,
)
from latentcot.types import Extraction

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PREFIXES = ("Answer:", "####")


@pytest.mark.parametrize(
    "kind,completion,expected",
    [
        ("number", "12 + 30 = 42\n42 + 41 = 83\nAnswer: 83", Extraction("83", "strict")),
        ("number", "so the total is 1,304.\nAnswer: $1,304.", Extraction("1,304", "strict")),
        ("number", "I think 7 then 9, finally 12", Extraction("12", "flexible")),
        ("number", "Answer: none\nbut 5 maybe", Extraction("5", "flexible")),
        ("number", "#### -3 (mod 7)", Extraction("-3", "strict")),
        ("number", "3-4 gives", Extraction("4", "flexible")),
        ("number", "no digits here", Extraction(None, None)),
        ("digits", "Answer: 0031", Extraction("0031", "strict")),
        ("boolean", "Sam is cold.\nanswer: FALSE", Extraction("FALSE", "strict")),
        ("boolean", "this is true, no wait, false.", Extraction("false", "flexible")),
        ("boolean", "untrue falsehood", Extraction(None, None)),
        ("entity", "Tom is a lempus.\nAnswer: Tom is a zorpus. Next question", Extraction("Tom is a zorpus", "strict")),
        ("entity", "Tom is a lempus.\nEvery lempus is a zorpus.", Extraction("zorpus", "flexible")),
        ("entity", "zorpus, I guess", Extraction("guess", "flexible")),
        ("symbol", "hop 1: c at 7 -> d at 6\nAnswer: d", Extraction("d", "strict")),
        ("symbol", "hop 1: c at 7 -> d at 6", Extraction("d", "flexible")),
        ("symbol", "it is a", Extraction(None, None)),
        ("text", "thinking...\nParis\n\n", Extraction("Paris", "flexible")),
        ("text", "Answer:   the Eiffel tower  \nmore", Extraction("the Eiffel tower", "strict")),
        ("text", "   \n", Extraction(None, None)),
    ],
)
def test_strategies(kind, completion, expected):
    assert extract_answer(completion, PREFIXES, kind) == expected


def test_the_last_answer_line_wins_and_any_declared_prefix_counts():
    text = "Answer: 1\nAnswer: 2\n#### 3\nthen Answer: 4 and 5"
    assert extract_answer(text, ("Answer:",), "number") == Extraction("4", "strict")
    assert extract_answer(text[:-20], ("Answer:", "####"), "number") == Extraction("3", "strict")
    assert extract_answer("#### 7", ("Answer:",), "number") == Extraction("7", "flexible")


@pytest.mark.parametrize(
    "kind,a,b,same",
    [
        ("number", "1,304", "1304", True),
        ("number", "$1304.00", "1304", True),
        ("number", "2.50", "2.5", True),
        ("number", "-0", "0", True),
        ("number", "007", "7", True),
        ("number", "1304", "1305", False),
        ("number", "1e3", "1000", False),
        ("digits", "0031", "31", False),
        ("digits", "0031", "0031", True),
        ("boolean", "True", "true.", True),
        ("boolean", "True", "False", False),
        ("entity", "Tom is a zorpus.", "zorpus", True),
        ("entity", "Tom is a zorpus.", "a Zorpus", True),
        ("entity", "Tom is a zorpus.", "Tom is not a zorpus", False),
        ("entity", "Tom is a zorpus.", "fexpus", False),
        ("symbol", "d", "D.", True),
        ("text", "The  Eiffel Tower.", "the eiffel tower", True),
    ],
)
def test_normalisation(kind, a, b, same):
    assert matches(a, b, kind) is same
    assert matches(b, a, kind) is same


def test_missing_prediction_never_matches():
    assert not matches("5", None, "number")
    with pytest.raises(ValueError, match="unknown answer kind"):
        normalize("5", "numeric")


@pytest.mark.parametrize(
    "answers,kind",
    [
        (["42", "1,000", "-3"], "number"),
        (["True", "false"], "boolean"),
        (["Tom is a zorpus.", "Max is a lempus."], "entity"),
        (["42", "True"], "text"),
        (["Paris"], "text"),
        ([], "text"),
    ],
)
def test_infer_kind(answers, kind):
    assert infer_kind(answers) == kind


# ----------------------------------------------------------------- fuzzing

GOLD = {
    "number": st.integers(-(10**12), 10**12).map(str),
    "digits": st.text("0123456789", min_size=1, max_size=12),
    "boolean": st.sampled_from(["True", "False"]),
    "entity": st.tuples(st.sampled_from(["Tom", "Max"]), st.from_regex(r"[a-z]{2,9}", fullmatch=True)).map(
        lambda t: f"{t[0]} is a {t[1]}."
    ),
    "symbol": st.sampled_from(list(SYMBOLS)),
    "text": st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1).filter(
        lambda s: s.strip() and "answer:" not in s.lower() and "####" not in s
    ),
}


@FUZZ
@given(text=st.text(), kind=st.sampled_from(KINDS), prefixes=st.lists(st.text(min_size=0, max_size=6), max_size=3))
def test_arbitrary_text_never_crashes(text, kind, prefixes):
    result = extract_answer(text, prefixes, kind)
    assert (result.prediction is None) == (result.strategy is None)
    if result.prediction is not None:
        assert result.strategy in ("strict", "flexible")
        normalize(result.prediction, kind)


@FUZZ
@given(
    data=st.data(),
    text=st.text(),
    kind=st.sampled_from(KINDS),
    prefix=st.sampled_from(PREFIXES),
    pad=st.sampled_from(["", " ", "  ", "\t"]),
)
def test_gold_answer_in_the_asked_format_is_always_extracted(data, text, kind, prefix, pad):
    gold = data.draw(GOLD[kind])
    completion = f"{text}\n{prefix}{pad or ' '}{gold}{pad}"
    result = extract_answer(completion, PREFIXES, kind)
    assert result.strategy == "strict"
    assert matches(gold, result.prediction, kind)


SPECS = ["addition", "addition:reverse=1", "phop", "igsm", "prosqa", "prontoqa"]


@pytest.mark.parametrize("spec", SPECS)
def test_gold_chain_of_thought_in_the_template_format_scores_correct(spec):
    task = load_task(spec)
    for example in task.examples("test", 25, 0):
        prefix = task.template_for(example).answer_prefix
        completion = " " + "\n".join(example.steps) + f"\n{prefix} {example.answer}\n"
        result = task.extract(completion)
        assert result.strategy == "strict" and task.score(example, result.prediction)
        assert not task.score(example, None)


@pytest.mark.parametrize("spec", ["addition", "phop", "igsm", "prosqa"])
def test_flexible_strategy_recovers_the_answer_from_bare_gold_steps(spec):
    # the last number / symbol / entity of the gold chain is the answer
    task = load_task(spec)
    for example in task.examples("test", 25, 0):
        result = task.extract("\n".join(example.steps))
        assert result.strategy == "flexible" and task.score(example, result.prediction)


@FUZZ
@given(text=st.text(max_size=200), index=st.integers(0, 9))
def test_wrong_answers_never_score(text, index):
    task = load_task("addition")
    example = task.examples("test", 10, 0)[index]
    wrong = str(int(example.answer) + 1)
    assert not task.score(example, task.extract(f"{text}\nAnswer: {wrong}").prediction)
