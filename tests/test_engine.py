"""The decode loop against HF generate and against a cache-free re-implementation."""

from __future__ import annotations

import pytest
import torch

from latentcot.config import DecodeConfig
from latentcot.engine import Engine
from latentcot.gates import EntropyGate, FixedGate, LatentGate, TokenGate
from latentcot.latent import HiddenLatent, NormedHiddenLatent, SoftLatent, TopKSoftLatent
from latentcot.sampling import distribution_stats
from latentcot.types import LATENT_TEXT, EmbeddingTable, StepView
from latentcot.zoo.tiny import ARCHITECTURES

PROMPTS = ["12+7=", "Every cat is a mammal. Is Tom a cat?", "x"]
LATENT_MODES = {
    "hidden": HiddenLatent(),
    "hidden-normed": NormedHiddenLatent(),
    "soft": SoftLatent(0.7),
    "topk-soft": TopKSoftLatent(4),
}


class Recording:
    """Wraps a gate and keeps a copy of every view it was shown."""

    def __init__(self, gate):
        self.gate, self.views = gate, []

    def start(self, batch, device):
        return self.gate.start(batch, device)

    def __call__(self, view, state=None):
        self.views.append(
            StepView(
                view.step,
                view.logits.clone(),
                view.entropy.clone(),
                view.hidden.clone(),
                view.n_latent.clone(),
                view.latent_run.clone(),
                view.active.clone(),
            )
        )
        return self.gate(view, state)


def greedy(n=24, **kw):
    return DecodeConfig(max_new_tokens=n, **kw)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS], ids=["batch1", "padded-batch"])
def test_token_mode_reproduces_hf_generate(models, tokenizer, arch, prompts):
    model = models[arch]
    traces = Engine(model, tokenizer).generate(prompts, TokenGate(), HiddenLatent(), greedy(24))
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    hf = model.generate(**enc, max_new_tokens=24, do_sample=False)[:, enc["input_ids"].shape[1] :]
    for trace, ref in zip(traces, hf.tolist()):
        assert trace.mode == ["token"] * len(trace.token_id)
        assert trace.token_id == ref[: len(trace.token_id)]
        # HF pads finished rows after EOS; the engine stops them.
        assert trace.finish_reason == "eos" or len(trace.token_id) == 24
        if trace.finish_reason == "eos":
            assert ref[len(trace.token_id) - 1] == tokenizer.eos_token_id


def reference_decode(model, tokenizer, prompts, gate, latent, n_steps):
    """The same decisions without a KV cache: every step re-runs the whole embedding sequence.

    Hidden states come from output_hidden_states (not the engine's LM-head hook), positions and
    masks are rebuilt from scratch. Returns per-step logits (B, V) and modes."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    embed = model.get_input_embeddings()
    table = EmbeddingTable(embed.weight, embed.weight.norm(dim=-1).mean())
    x, mask = embed(enc["input_ids"]), enc["attention_mask"]
    batch = x.shape[0]
    n_latent = torch.zeros(batch, dtype=torch.long)
    run = torch.zeros(batch, dtype=torch.long)
    state = gate.start(batch, "cpu")
    logits_per_step, modes = [], []
    with torch.no_grad():
        for t in range(n_steps):
            positions = (mask.cumsum(-1) - 1).clamp_min(0)
            out = model(inputs_embeds=x, attention_mask=mask, position_ids=positions, output_hidden_states=True)
            logits = out.logits[:, -1].float()
            view = StepView(
                t,
                logits,
                distribution_stats(logits)[1],
                out.hidden_states[-1][:, -1],
                n_latent,
                run,
                torch.ones(batch, dtype=torch.bool),
            )
            is_latent = gate(view, state)
            nxt = torch.where(is_latent[:, None], latent(view, table), embed(logits.argmax(-1)))
            x = torch.cat([x, nxt[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones(batch, 1, dtype=mask.dtype)], dim=1)
            n_latent, run = n_latent + is_latent.long(), (run + 1) * is_latent.long()
            logits_per_step.append(logits)
            modes.append(is_latent)
    return logits_per_step, modes


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("mode", LATENT_MODES)
def test_cached_latent_decoding_matches_cache_free_recomputation(models64, tokenizer, arch, mode):
    model, latent = models64[arch], LATENT_MODES[mode]
    gate = EntropyGate(threshold=0.0, max_consecutive=3)  # mostly latent, with token steps between
    recording = Recording(gate)
    # no row ends early: finished rows leave the batch, and the views are compared row for row
    traces = Engine(model, tokenizer).generate(PROMPTS, recording, latent, greedy(12, ignore_eos=True))
    ref_logits, ref_modes = reference_decode(model, tokenizer, PROMPTS, gate, latent, n_steps=12)
    assert len(recording.views) == 12
    for t, view in enumerate(recording.views):
        torch.testing.assert_close(view.logits, ref_logits[t], atol=1e-6, rtol=1e-6)
    ref_rows = torch.stack(ref_modes, 1).tolist()
    for trace, ref in zip(traces, ref_rows):
        assert [m == "latent" for m in trace.mode] == ref
    assert any(ref_rows[1]) and not all(ref_rows[1])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_mixed_mode_batch_equals_rows_alone(models64, tokenizer, arch):
    engine = Engine(models64[arch], tokenizer)
    probe = engine.generate(PROMPTS, TokenGate(), HiddenLatent(), greedy(16))
    threshold = float(torch.tensor([h for tr in probe for h in tr.entropy]).median())
    gate, latent = EntropyGate(threshold), SoftLatent()
    together = engine.generate(PROMPTS, gate, latent, greedy(16))
    modes_at_step = [{tr.mode[t] for tr in together} for t in range(16)]
    assert any(len(m) == 2 for m in modes_at_step), "no step where rows took different modes"
    for prompt, trace in zip(PROMPTS, together):
        (alone,) = engine.generate([prompt], gate, latent, greedy(16))
        assert alone.mode == trace.mode
        assert alone.token_id == trace.token_id
        torch.testing.assert_close(torch.tensor(alone.entropy), torch.tensor(trace.entropy), atol=1e-6, rtol=0)


def test_sampling_is_seeded_per_row(models, tokenizer):
    engine = Engine(models["llama"], tokenizer)
    cfg = DecodeConfig(max_new_tokens=20, temperature=1.0, top_p=0.95)
    gate = EntropyGate(threshold=3.0)
    first = engine.generate(PROMPTS, gate, SoftLatent(), cfg, seed=11)
    again = engine.generate(PROMPTS, gate, SoftLatent(), cfg, seed=11)
    other = engine.generate(PROMPTS, gate, SoftLatent(), cfg, seed=12)
    assert [t.token_id for t in first] == [t.token_id for t in again]
    assert [t.mode for t in first] == [t.mode for t in again]
    assert [t.token_id for t in first] != [t.token_id for t in other]
    # explicit per-row seeds make a row's samples independent of its batch-mates
    seeds = [101, 202, 303]
    batch = engine.generate(PROMPTS, gate, SoftLatent(), cfg, seed=seeds)
    (alone,) = engine.generate(PROMPTS[1:2], gate, SoftLatent(), cfg, seed=[202])
    assert alone.token_id == batch[1].token_id


def test_sampling_with_top_k_1_is_greedy(models, tokenizer):
    engine = Engine(models["qwen2"], tokenizer)
    sampled = engine.generate(PROMPTS, TokenGate(), HiddenLatent(), DecodeConfig(16, temperature=1.5, top_k=1), seed=3)
    greedy_ = engine.generate(PROMPTS, TokenGate(), HiddenLatent(), greedy(16))
    assert [t.token_id for t in sampled] == [t.token_id for t in greedy_]


def test_trace_fields_are_consistent(models, tokenizer):
    (trace,) = Engine(models["gpt2"], tokenizer).generate(PROMPTS[:1], EntropyGate(3.3), HiddenLatent(), greedy(20))
    n = trace.n_steps
    assert all(len(v) == n for v in trace.steps().values())
    assert trace.n_latent == trace.completion.count(LATENT_TEXT) > 0
    for p_tok, p_max, h in zip(trace.p_token, trace.p_max, trace.entropy):
        assert 0 < p_tok <= p_max <= 1 and h > 0
    # greedy: the recorded token is the argmax in every mode
    assert trace.p_token == pytest.approx(trace.p_max)


def test_fixed_gate_with_markers_is_coconut_decoding(models, tokenizer):
    engine = Engine(models["llama"], tokenizer)
    bot, eot = tokenizer.convert_tokens_to_ids(["<bot>", "<eot>"])
    (trace,) = engine.generate(["3+4="], FixedGate(3), HiddenLatent(), greedy(10, markers=("<bot>", "<eot>")))
    assert trace.mode[:5] == ["marker", "latent", "latent", "latent", "marker"]
    assert set(trace.mode[5:]) == {"token"}
    assert trace.token_id[0] == bot and trace.token_id[4] == eot
    assert trace.completion.startswith("<bot>" + LATENT_TEXT * 3 + "<eot>")
    # Feeding <bot> by hand and then k latents without markers gives the same thoughts.
    (by_hand,) = engine.generate(["3+4=<bot>"], FixedGate(3), HiddenLatent(), greedy(3))
    assert by_hand.mode == ["latent"] * 3
    torch.testing.assert_close(torch.tensor(by_hand.entropy), torch.tensor(trace.entropy[1:4]), atol=1e-4, rtol=0)


def test_unknown_marker_is_an_input_error(models, tokenizer):
    from latentcot.errors import InputError

    with pytest.raises(InputError, match="not a single token"):
        Engine(models["llama"], tokenizer).generate(
            ["1"], LatentGate(), HiddenLatent(), greedy(4, markers=("<think>", "<eot>"))
        )


def test_entropy_gate_caps(models, tokenizer):
    engine = Engine(models["gpt2"], tokenizer)
    (run_cap,) = engine.generate(["a"], EntropyGate(0.0, max_consecutive=2), HiddenLatent(), greedy(9))
    assert run_cap.mode == ["latent", "latent", "token"] * 3
    (total_cap,) = engine.generate(["a"], EntropyGate(0.0, max_latent=4), HiddenLatent(), greedy(9))
    assert total_cap.mode == ["latent"] * 4 + ["token"] * 5


def test_stop_strings_and_eos(models, tokenizer):
    model = models["llama"]
    engine = Engine(model, tokenizer)
    (free,) = engine.generate(["hi"], TokenGate(), HiddenLatent(), greedy(30))
    stop = free.completion[6:8]
    (stopped,) = engine.generate(["hi"], TokenGate(), HiddenLatent(), greedy(30, stop=(stop,)))
    assert stopped.finish_reason == "stop"
    assert stopped.completion.endswith(stop) and stopped.completion.count(stop) == 1
    assert stopped.token_id == free.token_id[: len(stopped.token_id)]
    # Declare the 5th greedy token an EOS: generation ends there and the text excludes it.
    eos_token = free.token_id[4]
    old = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [old, eos_token]
    try:
        (ended,) = Engine(model, tokenizer).generate(["hi"], TokenGate(), HiddenLatent(), greedy(30))
    finally:
        model.generation_config.eos_token_id = old
    first = free.token_id.index(eos_token)
    assert ended.finish_reason == "eos" and ended.token_id == free.token_id[: first + 1]
    assert ended.completion == tokenizer.decode(free.token_id[:first])


def test_context_overflow_is_an_input_error(models, tokenizer):
    from latentcot.errors import InputError

    with pytest.raises(InputError, match="exceeds the model's context of 512"):
        Engine(models["gpt2"], tokenizer).generate(["x" * 500], TokenGate(), HiddenLatent(), greedy(20))
