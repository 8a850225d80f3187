"""Tiny random-init models of several architectures, built in-process (no download)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the model hub

import pytest  # noqa: E402

from latentcot.zoo.tiny import ARCHITECTURES, char_tokenizer, tiny_model  # noqa: E402

# A larger init scale than HF's default makes next-token distributions peaked enough that greedy
# choices are not float-noise ties, so token-for-token comparisons are meaningful.
INIT_STD = 0.2


@pytest.fixture(scope="session")
def tokenizer():
    return char_tokenizer()


@pytest.fixture(scope="session")
def models(tokenizer):
    return {arch: tiny_model(arch, tokenizer, seed=1, init_std=INIT_STD) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def models64(models):
    """Float64 copies. Feeding latents back is chaotic in a random model: fp32 rounding that differs
    between equivalent computations (cache vs none, batch vs alone) grows ~10x per latent step, so
    equivalence is checked in float64, where it holds to fp32 resolution of the logits."""
    import copy

    return {arch: copy.deepcopy(model).double() for arch, model in models.items()}


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory, models, tokenizer):
    """A llama-shaped tiny model + tokenizer saved with save_pretrained."""
    path = tmp_path_factory.mktemp("model") / "tiny-llama"
    models["llama"].save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A five-line generic JSONL dataset of small sums."""
    path = tmp_path_factory.mktemp("data") / "sums.jsonl"
    rows = [{"question": f"{a} + {b} =", "answer": str(a + b)} for a, b in [(1, 2), (13, 5), (7, 70), (22, 9), (3, 3)]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
