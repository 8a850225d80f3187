"""The helpers of benchmarks/looped_exit.py that turn records into per-token roles and difficulty groups."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "looped_exit.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("looped_exit", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_roles_of_character_tokens(script):
    pieces = list("Answer: 310") + [""]
    assert script.roles(pieces) == ["before answer"] * 8 + ["answer[0]", "answer[1]", "answer[2]", "end"]


def test_roles_of_word_pieces_put_the_leading_space_with_the_first_digit(script):
    assert script.roles(["12", "\n", "Answer", ":", " 3", "1", ""]) == [
        "before answer",
        "before answer",
        "before answer",
        "before answer",
        "answer[0]",
        "answer[1]",
        "end",
    ]


def test_roles_use_the_last_answer_prefix_and_need_one(script):
    assert script.roles(["Answer: 1", "\n", "Answer: ", "2"]) == ["before answer"] * 3 + ["answer[0]"]
    assert script.roles(["no", " answer"]) == ["before answer"] * 2


@pytest.mark.parametrize("question, reverse", [("95 + 07 =", False), ("59 + 70 =", True)])
def test_carried_adds_the_carries_out_of_every_column(script, question, reverse):
    # 5 + 7 = 12 carries 1; 9 + 0 + 1 = 10 carries 1 again
    assert script._carried(question, reverse) == 2
    assert script._group("prefix\n" + question, reverse) == "carried 2"


def test_carried_counts_the_size_of_carries_and_knows_other_tasks(script):
    assert script._carried("12 + 30 + 41 =", False) == 0
    assert script._carried("99 + 99 + 99 + 99 =", False) == 6  # units 36 carry 3; tens 36 + 3 = 39 carry 3
    assert script._group("Is Tom a wumpus or a zumpus?", False) == "all"


def test_answer_tokens_are_checked_at_their_offset(script):
    assert script.token_correct("answer[1]", "0", "203") == 1.0
    assert script.token_correct("answer[0]", " 2", "203") == 1.0  # a word piece with its leading space
    assert script.token_correct("answer[2]", "9", "203") == 0.0
    assert script.token_correct("before answer", "A", "203") != script.token_correct("before answer", "A", "203")


def test_tokens_beyond_the_gold_answer_length_share_one_role(script):
    assert script.past_answer("answer[2]", "203") == "answer[2]"
    assert script.past_answer("answer[3]", "203") == "past answer"
    assert script.past_answer("before answer", "203") == "before answer"
