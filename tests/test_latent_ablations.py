"""Ablation latents (`zero`, `mean-embedding`, `shuffled`, `noise`): does the latent's content matter?"""

from __future__ import annotations

import pytest
import torch

from conftest import INIT_STD
from latentcot.config import LATENT_MODES, DecodeConfig, GateConfig, LatentConfig, setting_id
from latentcot.engine import Engine
from latentcot.errors import InputError
from latentcot.gates import make_gate
from latentcot.latent import (
    HiddenLatent,
    MeanEmbeddingLatent,
    MixtureOfInputs,
    MultiplexLatent,
    NoiseLatent,
    NormedHiddenLatent,
    RandomizedSoftLatent,
    ShuffledLatent,
    SoftLatent,
    TopKSoftLatent,
    ZeroLatent,
    make_latent,
)
from latentcot.sampling import distribution_stats, make_generators
from latentcot.types import EmbeddingTable, StepView
from latentcot.zoo.tiny import tiny_model
from test_cli import cli, records

ABLATIONS = ("zero", "mean-embedding", "shuffled", "noise")
PROMPTS = ["12+7=", "Every cat is a mammal. Is Tom a cat?", "x"]


def view_of(hidden, vocab=10, step=0, seeds=None):
    """A StepView of B = len(hidden) rows; ``seeds`` gives the rows' generators."""
    batch = hidden.shape[0]
    logits = torch.randn(batch, vocab, generator=torch.Generator().manual_seed(9))
    zeros = torch.zeros(batch, dtype=torch.long)
    generators = make_generators(seeds, "cpu") if seeds is not None else ()
    _, entropy = distribution_stats(logits)
    ones = torch.ones(batch, dtype=torch.bool)
    return StepView(step, logits, entropy, hidden, zeros, zeros, ones, logits.argmax(-1), generators)


def table_of(weight, scale=1.0):
    return EmbeddingTable(weight, (weight.float() * scale).norm(dim=-1).mean(), scale)


def hidden_states(batch, dim=8, seed=0):
    return torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed)) * torch.arange(1, batch + 1)[:, None]


def test_every_mode_is_registered():
    expected = {
        "hidden": HiddenLatent,
        "hidden-normed": NormedHiddenLatent,
        "soft": SoftLatent,
        "topk-soft": TopKSoftLatent,
        "zero": ZeroLatent,
        "mean-embedding": MeanEmbeddingLatent,
        "shuffled": ShuffledLatent,
        "noise": NoiseLatent,
        "moi": MixtureOfInputs,
        "random-soft": RandomizedSoftLatent,
        "multiplex": MultiplexLatent,
    }
    assert set(LATENT_MODES) == set(expected)
    for kind, cls in expected.items():
        assert isinstance(make_latent(LatentConfig(kind)), cls)
        assert cls.__doc__ and len(cls.__doc__.split()) > 10  # says what it is and where it comes from
    assert setting_id(GateConfig("latent"), LatentConfig("mean-embedding"), DecodeConfig()) == "latent-mean-embedding"
    with pytest.raises(InputError, match="unknown latent mode 'mean'.*zero, mean-embedding, shuffled, noise"):
        LatentConfig("mean")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_zero_is_exact_zeros_in_the_table_dtype(dtype):
    table = table_of(torch.randn(10, 8).to(dtype))
    out = ZeroLatent()(view_of(hidden_states(3)), table)
    assert out.shape == (3, 8) and out.dtype == dtype
    assert torch.equal(out, torch.zeros(3, 8, dtype=dtype))


def test_mean_embedding_is_the_scaled_table_mean():
    weight = torch.randn(10, 8, generator=torch.Generator().manual_seed(1))
    for scale in (1.0, 3.0):
        out = MeanEmbeddingLatent()(view_of(hidden_states(3)), table_of(weight, scale))
        assert out.shape == (3, 8) and out.dtype == weight.dtype
        torch.testing.assert_close(out, (weight * scale).mean(0).expand(3, 8))
    table = table_of(weight)
    MeanEmbeddingLatent()(view_of(hidden_states(2)), table).add_(1.0)  # a caller writing into the vector
    torch.testing.assert_close(table.mean_row, weight.mean(0))  # leaves the table's mean alone


def test_mean_embedding_on_gemma_is_on_the_module_scale(tokenizer):
    model = tiny_model("gemma2", tokenizer, seed=1, init_std=INIT_STD)
    embed = model.get_input_embeddings()
    table = EmbeddingTable.from_module(embed)
    with torch.no_grad():
        want = embed(torch.arange(embed.weight.shape[0])).mean(0)  # (D,) what the model embeds, averaged
    out = MeanEmbeddingLatent()(view_of(hidden_states(2, dim=64)), table)
    torch.testing.assert_close(out, want.expand(2, -1), rtol=1e-5, atol=1e-6)
    assert out.norm(dim=-1)[0] > 4 * embed.weight.mean(0).norm()  # sqrt(64) = 8 times the raw mean


def test_shuffled_takes_the_next_rows_hidden_state():
    table = table_of(torch.randn(10, 8))
    hidden = hidden_states(4)
    out = ShuffledLatent()(view_of(hidden), table)
    torch.testing.assert_close(out, torch.roll(hidden, -1, dims=0))
    for i in range(4):
        assert torch.equal(out[i], hidden[(i + 1) % 4])
    alone = hidden_states(1)
    assert torch.equal(ShuffledLatent()(view_of(alone), table), alone)  # B = 1: its own state
    half = ShuffledLatent()(view_of(hidden), table_of(torch.randn(10, 8).half()))
    assert half.dtype == torch.float16


def test_noise_has_the_hidden_norm_per_row_and_is_seeded_per_row():
    table = table_of(torch.randn(10, 8))
    hidden = hidden_states(3)
    seeds = [11, 22, 33]
    first = NoiseLatent()(view_of(hidden, step=4, seeds=seeds), table)
    torch.testing.assert_close(first.norm(dim=-1), hidden.norm(dim=-1))
    again = NoiseLatent()(view_of(hidden, step=4, seeds=seeds), table)
    assert torch.equal(first, again)  # same seeds and step: the same noise
    other = NoiseLatent()(view_of(hidden, step=4, seeds=[12, 22, 34]), table)
    assert torch.equal(other[1], first[1]) and not torch.allclose(other[0], first[0])
    assert not torch.allclose(other[2], first[2])
    later = NoiseLatent()(view_of(hidden, step=5, seeds=seeds), table)
    assert not torch.allclose(later, first)  # a fresh draw at every step
    # per row: a row's noise does not depend on its batch-mates
    alone = NoiseLatent()(view_of(hidden[1:2], step=4, seeds=[22]), table)
    assert torch.equal(alone[0], first[1])
    # a direction, not the hidden state: cosines with it are small in expectation
    assert (torch.cosine_similarity(first, hidden, dim=-1).abs() < 0.99).all()


def test_noise_leaves_the_rows_sampling_generators_alone():
    view = view_of(hidden_states(2), seeds=[5, 6])
    states = [g.get_state().clone() for g in view.generators]
    NoiseLatent()(view, table_of(torch.randn(10, 8)))
    assert all(torch.equal(g.get_state(), s) for g, s in zip(view.generators, states))


def test_noise_without_generators_is_refused():
    with pytest.raises(ValueError, match="one generator per row"):
        NoiseLatent()(view_of(hidden_states(2)), table_of(torch.randn(10, 8)))


@pytest.fixture(scope="module")
def gemma(tokenizer):
    return tiny_model("gemma3_text", tokenizer, seed=1, init_std=INIT_STD)


@pytest.mark.parametrize("kind", ABLATIONS)
def test_each_ablation_decodes_through_the_engine(models, gemma, tokenizer, kind):
    for model in (models["llama"], gemma):
        engine = Engine(model, tokenizer)
        traces = engine.generate(
            PROMPTS, make_gate(GateConfig("latent")), make_latent(LatentConfig(kind)), DecodeConfig(max_new_tokens=5)
        )
        assert all(t.mode == ["latent"] * 5 for t in traces)
        assert all(len(t.token_id) == 5 and all(0 <= h for h in t.entropy) for t in traces)


def test_noise_decoding_is_reproducible_and_batch_independent_when_sampling(gemma, tokenizer):
    """Sampled tokens and noise share nothing: a row's record depends only on its seed, not on its
    batch-mates' gates, and measuring does not change it."""
    engine = Engine(gemma, tokenizer)
    probe = engine.generate(PROMPTS, make_gate(GateConfig("token")), HiddenLatent(), DecodeConfig(max_new_tokens=12))
    tau = float(torch.tensor([h for t in probe for h in t.entropy]).median())
    gate, latent = make_gate(GateConfig("entropy", threshold=tau)), make_latent(LatentConfig("noise"))
    cfg = DecodeConfig(max_new_tokens=12, temperature=1.0)
    seeds = [101, 202, 303]
    batch = engine.generate(PROMPTS, gate, latent, cfg, seed=seeds)
    assert any("latent" in t.mode for t in batch) and any("token" in t.mode for t in batch)
    again = engine.generate(PROMPTS, gate, latent, cfg, seed=seeds)
    measured = engine.generate(PROMPTS, gate, latent, cfg, seed=seeds, measure=("counterfactual",))
    for a, b, c in zip(batch, again, measured):
        assert a.mode == b.mode == c.mode and a.token_id == b.token_id == c.token_id
    for i, prompt in enumerate(PROMPTS):
        (alone,) = engine.generate([prompt], gate, latent, cfg, seed=[seeds[i]])
        assert alone.mode == batch[i].mode and alone.token_id == batch[i].token_id
    other = engine.generate(PROMPTS, gate, latent, cfg, seed=[7, 8, 9])
    assert [t.token_id for t in other] != [t.token_id for t in batch]


def test_cli_runs_an_ablation(tmp_path, saved_model, dataset):
    out = tmp_path / "run"
    args = ("--model", saved_model, "--task", dataset, "--limit", "2", "--max-new-tokens", "4", "--out", out)
    assert cli("run", *args, "--gate", "latent", "--latent", "shuffled", "--batch-size", "2") == 0
    recs = records(out)
    assert len(recs) == 2 and {r["setting_id"] for r in recs} == {"latent-shuffled"}
    assert all(r["setting"]["latent"] == "shuffled" and r["n_latent"] == 4 for r in recs)
