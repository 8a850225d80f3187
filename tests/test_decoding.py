"""Helpers both backends share (latentcot.decoding), and what the decode loop may import."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from latentcot.decoding import (
    check_prompts_room,
    check_room,
    context_length,
    eos_token_ids,
    render_completion,
    stop_hit,
)
from latentcot.errors import InputError
from latentcot.types import LATENT, LATENT_TEXT, MARKER, TOKEN


def test_completion_renders_each_latent_step_and_drops_a_final_eos(tokenizer):
    ids = tokenizer("12+7")["input_ids"]
    modes = [TOKEN, TOKEN, LATENT, LATENT, TOKEN, TOKEN, TOKEN]
    token_ids = [ids[0], ids[1], 5, 6, ids[2], ids[3], tokenizer.eos_token_id]
    assert render_completion(tokenizer, modes, token_ids, drop_last=True) == f"12{LATENT_TEXT}{LATENT_TEXT}+7"
    kept = render_completion(tokenizer, modes, token_ids, drop_last=False)
    assert kept.startswith(f"12{LATENT_TEXT}{LATENT_TEXT}+7") and len(kept) > len("12+7") + 2 * len(LATENT_TEXT)


def test_a_marker_is_rendered_as_its_token_text(tokenizer):
    ids = tokenizer("ab")["input_ids"]
    assert render_completion(tokenizer, [MARKER, LATENT, MARKER], [ids[0], 9, ids[1]], False) == f"a{LATENT_TEXT}b"


def test_stop_string_spanning_tokens_is_found_and_the_window_stays_short(tokenizer):
    recent: list[int] = []
    hits = [stop_hit(tokenizer, ("\nQ",), recent, i) for i in tokenizer("ab\nQc")["input_ids"]]
    assert hits == [False, False, False, True, True]
    assert len(recent) <= len("\nQ") + 1


def test_eos_ids_merge_the_tokenizer_and_the_generation_config():
    tokenizer = SimpleNamespace(eos_token_id=2)
    assert eos_token_ids(tokenizer, None) == [2]
    assert eos_token_ids(tokenizer, 7) == [2, 7]
    assert eos_token_ids(tokenizer, [9, 2]) == [2, 9]
    assert eos_token_ids(SimpleNamespace(eos_token_id=None), None) == []


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"max_position_embeddings": 64}, 64),
        ({"n_positions": 1024}, 1024),
        ({"seq_length": 8}, 8),
        ({}, None),
        ({"max_position_embeddings": None, "n_positions": 32}, 32),
    ],
)
def test_context_length_reads_whichever_field_the_config_has(fields, expected):
    assert context_length(SimpleNamespace(**fields)) == expected


def test_room_check_names_the_prompt_that_does_not_fit(tokenizer):
    check_room(60, 4, 64)
    check_room(10**6, 4, None)  # unknown context: nothing to check
    with pytest.raises(InputError) as err:
        check_prompts_room(tokenizer, ["short", "x" * 70], 4, ["task a", "task b"], 64)
    assert err.value.where == "task b" and "64 positions" in str(err.value)


def test_the_decode_loop_does_not_import_the_zoo():
    code = "import sys, latentcot.engine; print(sorted(m for m in sys.modules if m.startswith('latentcot.zoo')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
