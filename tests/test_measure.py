"""--measure counterfactual: the probe's KL, latent geometry and logit lens, and that probing
leaves decoding untouched."""

from __future__ import annotations

import json

import pytest
import torch

from latentcot.config import DecodeConfig, GateConfig, LatentConfig
from latentcot.engine import Engine
from latentcot.gates import make_gate
from latentcot.latent import make_latent
from latentcot.measure import LENS_TOP, kl_divergence
from test_cli import cli, records

PROMPTS = ["12 + 7 =", "Every cat is a pet. Tom is", "a b c"]
MEASURED = ("kl_counterfactual", "latent_token_cos", "latent_norm", "lens_top")


def generate(model, tokenizer, gate, latent, measure=(), new=12, **decode):
    engine = Engine(model, tokenizer)
    return engine.generate(
        PROMPTS,
        make_gate(gate),
        make_latent(latent),
        DecodeConfig(max_new_tokens=new, **decode),
        seed=3,
        measure=measure,
    )


def core(trace):
    return trace.mode, trace.token_id, trace.entropy, trace.p_token, trace.completion


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
@pytest.mark.parametrize(
    "gate, latent, decode",
    [
        (GateConfig("token"), LatentConfig("hidden"), {}),
        (GateConfig("entropy", threshold=3.4), LatentConfig("soft"), {}),
        (GateConfig("entropy", threshold=3.4), LatentConfig("hidden-normed"), {"temperature": 0.9, "top_k": 20}),
    ],
)
def test_probing_leaves_decoding_unchanged(models, tokenizer, arch, gate, latent, decode):
    plain = generate(models[arch], tokenizer, gate, latent, **decode)
    probed = generate(models[arch], tokenizer, gate, latent, measure=("counterfactual",), **decode)
    assert [core(t) for t in plain] == [core(t) for t in probed]
    for trace in probed:
        assert set(trace.extra) == set(MEASURED)
        assert all(len(values) == trace.n_steps for values in trace.extra.values())


@pytest.mark.parametrize("latent", [LatentConfig("topk-soft", top_k=1), LatentConfig("soft", temperature=1e-6)])
def test_kl_is_exactly_zero_when_latent_equals_the_fed_token(models, tokenizer, latent):
    # greedy, and the latent is the argmax token's own embedding: both probes see the same input
    traces = generate(models["llama"], tokenizer, GateConfig("token"), latent, measure=("counterfactual",))
    for trace in traces:
        kls = trace.extra["kl_counterfactual"]
        assert all(kl == 0.0 for kl in kls[:-1]) and kls[-1] is None  # the last step has no next step


def test_kl_is_positive_for_hidden_latents(models, tokenizer):
    traces = generate(
        models["llama"], tokenizer, GateConfig("token"), LatentConfig("hidden"), measure=("counterfactual",)
    )
    kls = [kl for t in traces for kl in t.extra["kl_counterfactual"] if kl is not None]
    assert kls and all(kl > 0 for kl in kls)


def test_kl_matches_a_cache_free_recomputation(models64, tokenizer):
    """At token step t: KL between the next-step distributions of two full forwards, one with the
    latent and one with the token at position t."""
    model = models64["llama"]
    engine = Engine(model, tokenizer)
    gate, latent = GateConfig("entropy", threshold=3.4), LatentConfig("soft")
    [trace] = engine.generate(
        [PROMPTS[1]], make_gate(gate), make_latent(latent), DecodeConfig(max_new_tokens=8), measure=("counterfactual",)
    )
    embed = model.get_input_embeddings()
    ids = tokenizer(PROMPTS[1], return_tensors="pt")["input_ids"]
    inputs = embed(ids)[0]  # (T, D)
    with torch.no_grad():
        for t, mode in enumerate(trace.mode[:-1]):
            logits = model(inputs_embeds=inputs[None]).logits[0, -1]  # p_t: what step t decided from
            soft = torch.softmax(logits, -1) @ embed.weight  # the soft latent at step t
            fed = soft if mode == "latent" else embed.weight[trace.token_id[t]]
            if mode == "token":
                with_latent = model(inputs_embeds=torch.cat([inputs, soft[None]])[None]).logits[0, -1]
                with_token = model(inputs_embeds=torch.cat([inputs, fed[None]])[None]).logits[0, -1]
                expected = kl_divergence(with_latent[None], with_token[None]).item()
                assert trace.extra["kl_counterfactual"][t] == pytest.approx(expected, rel=1e-5, abs=1e-9)
            else:
                assert trace.extra["kl_counterfactual"][t] is None
            inputs = torch.cat([inputs, fed[None]])
    assert "token" in trace.mode and "latent" in trace.mode  # both branches were checked


def test_latent_geometry_and_logit_lens(models, tokenizer):
    # a latent that is exactly a token embedding sits on it: cosine 1, norm ratio 1
    [exact] = generate(
        models["gpt2"], tokenizer, GateConfig("latent"), LatentConfig("topk-soft", top_k=1), measure=("counterfactual",)
    )[:1]
    assert all(c == pytest.approx(1.0, abs=1e-5) for c in exact.extra["latent_token_cos"])
    assert all(n == pytest.approx(1.0, abs=1e-5) for n in exact.extra["latent_norm"])
    [hidden] = generate(
        models["gpt2"],
        tokenizer,
        GateConfig("entropy", threshold=3.4),
        LatentConfig("hidden"),
        measure=("counterfactual",),
    )[:1]
    for mode, cos, norm, lens in zip(hidden.mode, *(hidden.extra[k] for k in MEASURED[1:])):
        if mode == "latent":
            assert -1 <= cos < 0.999 and norm > 0
            assert len(lens) == LENS_TOP and all(isinstance(tok, str) for tok in lens)
        else:
            assert cos is None and norm is None and lens is None


def test_kl_divergence_against_a_direct_formula():
    gen = torch.Generator().manual_seed(0)
    p, q = torch.randn(4, 30, generator=gen), torch.randn(4, 30, generator=gen)
    pp, qq = p.softmax(-1), q.softmax(-1)
    assert torch.allclose(kl_divergence(p, q), (pp * (pp / qq).log()).sum(-1), atol=1e-6)
    masked = p.clone()
    masked[:, :5] = float("-inf")  # zero-probability tokens contribute nothing (not NaN)
    assert torch.isfinite(kl_divergence(masked, q)).all()
    assert torch.equal(kl_divergence(p, p), torch.zeros(4))


def test_run_with_measurements_records_them(tmp_path, saved_model):
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
            "--gate",
            "entropy",
            "--threshold",
            "3.4",
            "--latent",
            "soft",
            "--max-new-tokens",
            "8",
            "--measure",
            "counterfactual",
            "--out",
            out,
        )
        == 0
    )
    for row in records(out):
        assert set(MEASURED) <= row["steps"].keys()
        assert all(len(row["steps"][k]) == row["n_steps"] for k in MEASURED)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["measure"] == ["counterfactual"]


def test_probe_rolls_back_sliding_window_caches(tokenizer):
    """Past the window, a sliding-window layer keeps only recent states; the probe must still leave no trace."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "mistral",
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        sliding_window=4,
        initializer_range=0.2,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    gate, latent = GateConfig("entropy", threshold=3.4), LatentConfig("soft")
    plain = generate(model, tokenizer, gate, latent)
    probed = generate(model, tokenizer, gate, latent, measure=("counterfactual",))
    assert [core(t) for t in plain] == [core(t) for t in probed]
    assert any(kl is not None and kl > 0 for t in probed for kl in t.extra["kl_counterfactual"])
