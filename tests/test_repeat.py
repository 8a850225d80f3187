"""--repeat-layers: a range of a pretrained model's layers applied r times, each application with its own cache slot."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from conftest import INIT_STD
from latentcot.config import DecodeConfig, ModelConfig
from latentcot.engine import Engine
from latentcot.errors import InputError
from latentcot.gates import EntropyGate
from latentcot.latent import HiddenLatent
from latentcot.model import load_model
from latentcot.repeat import parse_range, repeat_layers
from latentcot.zoo.tiny import ARCHITECTURES, tiny_model
from test_cli import cli, records
from test_engine import PROMPTS, Recording, reference_decode

PREFIX = {"gpt2": "transformer.h.", "llama": "model.layers.", "qwen2": "model.layers."}


def explicit(arch, tokenizer, model, order):
    """A freshly built model of len(order) layers whose layer i holds a copy of ``model``'s layer order[i]."""
    deeper = tiny_model(arch, tokenizer, seed=5, init_std=INIT_STD, layers=len(order))
    source, prefix, state = model.state_dict(), PREFIX[arch], {}
    for key in deeper.state_dict():
        if key.startswith(prefix):
            index, rest = key[len(prefix) :].split(".", 1)
            key_from = f"{prefix}{order[int(index)]}.{rest}"
        else:
            key_from = key
        state[key] = source[key_from].clone()
    deeper.load_state_dict(state, strict=True)
    return deeper.to(model.dtype).eval()


def logits(model, enc):
    positions = (enc["attention_mask"].cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        return model(**enc, position_ids=positions).logits


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_repeats_1_is_identity_and_2_equals_the_explicit_deeper_model(models, tokenizer, arch):
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    base = models[arch]
    same = repeat_layers(copy.deepcopy(base), 0, 2, 1)
    torch.testing.assert_close(logits(same, enc), logits(base, enc))
    for start, end, repeats, order in ((0, 1, 2, [0, 0, 1]), (1, 2, 3, [0, 1, 1, 1]), (0, 2, 2, [0, 1, 0, 1])):
        repeated = repeat_layers(copy.deepcopy(base), start, end, repeats)
        assert repeated.config.num_hidden_layers == len(order)
        n_params = sum(p.numel() for p in repeated.parameters())
        assert n_params == sum(p.numel() for p in base.parameters())  # references, not copies
        torch.testing.assert_close(
            logits(repeated, enc), logits(explicit(arch, tokenizer, base, order), enc), atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_cached_decoding_of_a_repeated_model_matches_recomputation(models64, tokenizer, arch):
    model = repeat_layers(copy.deepcopy(models64[arch]), 1, 2, 3)
    gate = Recording(EntropyGate(threshold=0.0, max_consecutive=2))
    Engine(model, tokenizer).generate(PROMPTS, gate, HiddenLatent(), DecodeConfig(max_new_tokens=8))
    ref_logits, _ = reference_decode(
        model, tokenizer, PROMPTS, EntropyGate(threshold=0.0, max_consecutive=2), HiddenLatent(), 8
    )
    for t, view in enumerate(gate.views):
        torch.testing.assert_close(view.logits, ref_logits[t], atol=1e-6, rtol=1e-6)


def test_bad_ranges_are_input_errors(models):
    model = copy.deepcopy(models["llama"])
    for start, end, repeats in ((1, 1, 2), (-1, 1, 2), (0, 3, 2), (0, 1, 0)):
        with pytest.raises(InputError):
            repeat_layers(model, start, end, repeats)
    assert parse_range("2:4") == (2, 4)
    for bad in ("2", "a:b", "1:2:3"):
        with pytest.raises(InputError):
            parse_range(bad)


def test_cli_repeat_layers_runs_and_refuses_bad_ranges(tmp_path, saved_model, capsys):
    out = tmp_path / "run"
    assert (
        cli(
            "run",
            "--model",
            saved_model,
            "--task",
            "addition:n=2,digits=1",
            "--limit",
            "2",
            "--max-new-tokens",
            "4",
            "--repeat-layers",
            "0:2",
            "--repeats",
            "2",
            "--out",
            out,
        )
        == 0
    )
    assert len(records(out)) == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["repeat_layers"] == [0, 2, 2]
    assert load_model(ModelConfig(str(saved_model), repeat_layers=(0, 2, 2))).model.config.num_hidden_layers == 4
    capsys.readouterr()
    for spec in ("1:9", "2-3"):
        bad = tmp_path / f"bad{spec}"
        assert cli("run", "--model", saved_model, "--task", "addition", "--repeat-layers", spec, "--out", bad) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "layer range" in err and not bad.exists()
