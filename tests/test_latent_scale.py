"""Latent vectors are on the scale the model's own embedding module produces, on every architecture.

Gemma (1, 2 and 3) multiplies token embeddings by sqrt(hidden) inside the embedding module, and
``inputs_embeds`` are not scaled again; a latent mixed from the raw weight would be that much too
small. The invariant: a top-k soft latent with k = 1 *is* the argmax token's input embedding, so
decoding with it at every step is greedy token decoding, bit for bit.
"""

from __future__ import annotations

import pytest
import torch

from conftest import INIT_STD
from latentcot.config import DecodeConfig, GateConfig, LatentConfig
from latentcot.engine import Engine
from latentcot.gates import make_gate
from latentcot.latent import NormedHiddenLatent, SoftLatent, TopKSoftLatent, make_latent
from latentcot.sampling import distribution_stats
from latentcot.types import EmbeddingTable, StepView
from latentcot.zoo.tiny import TEST_ARCHITECTURES, tiny_model

PROMPTS = ["12+7=", "Every cat is a mammal. Is Tom a cat?", "x"]  # different lengths: left padding
SCALED = ("gemma", "gemma2", "gemma3_text")  # embedding modules that multiply by sqrt(hidden)


@pytest.fixture(scope="module")
def test_models(tokenizer):
    return {arch: tiny_model(arch, tokenizer, seed=1, init_std=INIT_STD) for arch in TEST_ARCHITECTURES}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("arch", TEST_ARCHITECTURES)
def test_table_rows_are_exactly_the_module_embeddings(tokenizer, arch, dtype):
    # hidden 96 = 3 heads of 32: sqrt(96) is not a power of two, so its rounding to the dtype shows
    model = tiny_model(arch, tokenizer, seed=2, init_std=INIT_STD, hidden=96, heads=3).to(dtype)
    embed = model.get_input_embeddings()
    table = EmbeddingTable.from_module(embed)
    ids = torch.arange(embed.weight.shape[0])
    with torch.no_grad():
        want = embed(ids)  # (V, D)
    assert table.weight.data_ptr() == embed.weight.data_ptr()  # never a copy of a plain or scaled table
    assert torch.equal(table.rows(ids), want)
    if arch in SCALED:
        assert table.scale == torch.tensor(96**0.5, dtype=dtype).item() != 1.0
    else:
        assert table.scale == 1.0
    torch.testing.assert_close(table.mean_norm, want.float().norm(dim=-1).mean(), rtol=1e-3, atol=0)
    tol = {torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]  # mean_row is rounded to the table's dtype
    torch.testing.assert_close(table.mean_row.float(), want.float().mean(0), rtol=0, atol=tol)


def test_token_mixtures_use_the_scaled_rows():
    gen = torch.Generator().manual_seed(0)
    weight, scale = torch.randn(10, 8, generator=gen), 3.0
    scaled = weight * scale  # (V, D) what the module would give
    table = EmbeddingTable(weight, scaled.norm(dim=-1).mean(), scale)
    logits = torch.randn(2, 13, generator=gen)  # 3 padded columns past the table
    zeros = torch.zeros(2, dtype=torch.long)
    hidden = torch.randn(2, 8, generator=gen)
    view = StepView(0, logits, distribution_stats(logits)[1], hidden, zeros, zeros, zeros == 0)
    torch.testing.assert_close(SoftLatent()(view, table), logits.softmax(-1)[:, :10] @ scaled)
    values, ids = logits[:, :10].topk(3, dim=-1)
    want = torch.einsum("bk,bkd->bd", values.softmax(-1), scaled[ids])
    torch.testing.assert_close(TopKSoftLatent(3)(view, table), want)
    assert torch.equal(TopKSoftLatent(1)(view, table), scaled[logits[:, :10].argmax(-1)])
    torch.testing.assert_close(NormedHiddenLatent()(view, table).norm(dim=-1), table.mean_norm.expand(2))


class Shifted(torch.nn.Embedding):
    """An embedding whose forward is not a multiple of its weight: the table must be materialised."""

    def forward(self, ids):
        return super().forward(ids) * 2.0 + 1.0


class Wrapped(torch.nn.Module):
    """An embedding module without a ``weight`` of its own."""

    def __init__(self, vocab, dim):
        super().__init__()
        self.inner = torch.nn.Embedding(vocab, dim)
        self.num_embeddings = vocab

    def forward(self, ids):
        return self.inner(ids) * 3.0


class Negated(torch.nn.Embedding):
    def forward(self, ids):
        return -super().forward(ids)


@pytest.mark.parametrize("module", [Shifted(40, 8), Wrapped(40, 8), Negated(40, 8)], ids=lambda m: type(m).__name__)
def test_other_embedding_modules_are_materialised(module):
    table = EmbeddingTable.from_module(module)
    with torch.no_grad():
        want = module(torch.arange(40))
    assert table.scale == 1.0 and not table.weight.requires_grad
    assert torch.equal(table.weight, want) and torch.equal(table.rows(torch.tensor([3, 7])), want[[3, 7]])
    torch.testing.assert_close(table.mean_norm, want.norm(dim=-1).mean())


@pytest.mark.parametrize("arch", TEST_ARCHITECTURES)
def test_top1_soft_latent_at_every_step_decodes_like_greedy_tokens(test_models, tokenizer, arch):
    """Fails on Gemma when latents are mixed from the raw weight (sqrt(hidden) too small)."""
    engine = Engine(test_models[arch], tokenizer)
    cfg = DecodeConfig(max_new_tokens=12, ignore_eos=True)  # a latent step never ends a row: compare all 12
    latent = make_latent(LatentConfig("topk-soft", top_k=1))
    tokens = engine.generate(PROMPTS, make_gate(GateConfig("token")), latent, cfg)
    for gate in (GateConfig("latent"), GateConfig("entropy", threshold=0.0)):
        latents = engine.generate(PROMPTS, make_gate(gate), latent, cfg)
        for tok, lat in zip(tokens, latents):
            assert lat.mode == ["latent"] * 12  # every step fed the latent (entropy > 0 at every step)
            assert lat.token_id == tok.token_id  # the argmax ids
            torch.testing.assert_close(torch.tensor(lat.entropy), torch.tensor(tok.entropy), rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(torch.tensor(lat.p_max), torch.tensor(tok.p_max), rtol=1e-6, atol=1e-6)


def test_top1_soft_latent_decodes_like_greedy_tokens_in_bfloat16(tokenizer):
    model = tiny_model("gemma2", tokenizer, seed=3, init_std=INIT_STD, hidden=96, heads=3).to(torch.bfloat16)
    engine = Engine(model, tokenizer)
    cfg = DecodeConfig(max_new_tokens=10, ignore_eos=True)
    latent = make_latent(LatentConfig("topk-soft", top_k=1))
    tokens = engine.generate(PROMPTS, make_gate(GateConfig("token")), latent, cfg)
    latents = engine.generate(PROMPTS, make_gate(GateConfig("latent")), latent, cfg)
    assert [t.token_id for t in latents] == [t.token_id for t in tokens]
    assert [t.entropy for t in latents] == [t.entropy for t in tokens]  # the same inputs, bit for bit


def test_measured_latent_geometry_is_on_the_module_scale(test_models, tokenizer):
    # A top-1 latent is a token embedding: cosine 1 to it and norm ratio 1 against the *scaled* row.
    (trace,) = Engine(test_models["gemma2"], tokenizer).generate(
        PROMPTS[:1],
        make_gate(GateConfig("latent")),
        make_latent(LatentConfig("topk-soft", top_k=1)),
        DecodeConfig(max_new_tokens=6),
        measure=("counterfactual",),
    )
    assert trace.extra["latent_token_cos"] == pytest.approx([1.0] * 6, abs=1e-5)
    assert trace.extra["latent_norm"] == pytest.approx([1.0] * 6, abs=1e-5)
