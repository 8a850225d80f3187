"""Loading checkpoints from disk, and the one-line errors for what can go wrong."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import AutoConfig, AutoModelForMaskedLM

from latentcot.config import ModelConfig
from latentcot.errors import InputError
from latentcot.model import load_model


def test_load_saved_model_roundtrip(saved_model, models):
    loaded = load_model(ModelConfig(str(saved_model), device="cpu"))
    assert loaded.tokenizer.padding_side == "left"
    assert loaded.identity["model_type"] == "llama" and len(loaded.identity["config_sha256"]) == 16
    assert loaded.identity["vocab_size"] == loaded.model.config.vocab_size == len(loaded.tokenizer)
    ids = torch.tensor([[5, 6, 7]])
    torch.testing.assert_close(loaded.model(ids).logits, models["llama"](ids).logits)


def test_dtype_option(saved_model):
    loaded = load_model(ModelConfig(str(saved_model), dtype="bfloat16", device="cpu"))
    assert loaded.model.dtype == torch.bfloat16 and loaded.identity["dtype"] == "bfloat16"


def test_pad_token_falls_back_to_eos(tmp_path, saved_model):
    path = tmp_path / "nopad"
    shutil.copytree(saved_model, path)
    loaded = load_model(ModelConfig(str(path), device="cpu"))
    loaded.tokenizer.pad_token = None  # simulate a tokenizer saved without one
    loaded.tokenizer.save_pretrained(path)
    again = load_model(ModelConfig(str(path), device="cpu"))
    assert again.tokenizer.pad_token == again.tokenizer.eos_token == "<eos>"


def test_missing_directory(tmp_path):
    with pytest.raises(InputError, match="model directory .*missing does not exist"):
        load_model(ModelConfig(str(tmp_path / "missing")))


def test_directory_without_config(tmp_path):
    with pytest.raises(InputError, match="not a saved model directory"):
        load_model(ModelConfig(str(tmp_path)))


def test_non_causal_model_is_refused(tmp_path, tokenizer):
    config = AutoConfig.for_model(
        "bert",
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    AutoModelForMaskedLM.from_config(config).save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    with pytest.raises(InputError, match=r"\(bert\) is not a causal language model"):
        load_model(ModelConfig(str(tmp_path / "bert")))


def test_missing_tokenizer(tmp_path, models):
    models["gpt2"].save_pretrained(tmp_path / "no-tok")
    with pytest.raises(InputError, match="cannot load a tokenizer"):
        load_model(ModelConfig(str(tmp_path / "no-tok")))


def test_unknown_builtin():
    with pytest.raises(InputError, match="unknown built-in model 'nope'"):
        load_model(ModelConfig("builtin:nope"))
