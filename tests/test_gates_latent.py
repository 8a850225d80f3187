"""Entropy, gates, latent vectors, token filtering and config validation, on plain tensors."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import scipy.stats
import torch

from latentcot.config import DecodeConfig, GateConfig, LatentConfig, ModelConfig
from latentcot.errors import InputError
from latentcot.gates import EntropyGate, FixedGate, LatentGate, TokenGate, entropy_in_unit, make_gate
from latentcot.latent import HiddenLatent, NormedHiddenLatent, SoftLatent, TopKSoftLatent, make_latent
from latentcot.sampling import distribution_stats, filter_logits, row_seed
from latentcot.types import EmbeddingTable, StepView
from latentcot.validation import from_mapping


def view_of(logits, hidden=None, n_latent=None, run=None):
    batch = logits.shape[0]
    zeros = torch.zeros(batch, dtype=torch.long)
    _, entropy = distribution_stats(logits)
    hidden = torch.randn(batch, 8) if hidden is None else hidden
    return StepView(
        0,
        logits,
        entropy,
        hidden,
        zeros if n_latent is None else n_latent,
        zeros if run is None else run,
        torch.ones(batch, dtype=torch.bool),
    )


@pytest.mark.parametrize("unit", ["nats", "bits", "normalized"])
def test_entropy_matches_scipy_in_every_unit(unit):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 300, generator=gen) * torch.rand(64, 1, generator=gen) * 8
    logits[:5, 100:] = float("-inf")  # rows with masked-out tokens
    probs, entropy = distribution_stats(logits)
    got = entropy_in_unit(entropy, unit, vocab_size=300).double().numpy()
    base = {"nats": math.e, "bits": 2, "normalized": 300}[unit]
    want = scipy.stats.entropy(probs.double().numpy(), base=base, axis=-1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.isfinite(got).all()


def test_entropy_gate_threshold_in_bits_and_normalized():
    logits = torch.zeros(2, 16)
    logits[1, 0] = 10.0  # row 0 uniform: H = log 16 = 4 bits; row 1 peaked
    view = view_of(logits)
    assert EntropyGate(3.9, "bits")(view).tolist() == [True, False]
    assert EntropyGate(4.1, "bits")(view).tolist() == [False, False]
    assert EntropyGate(0.99, "normalized")(view).tolist() == [True, False]
    assert EntropyGate(math.log(16) - 1e-3, "nats")(view).tolist() == [True, False]


def test_caps_and_fixed_gate_read_the_row_counters():
    logits = torch.zeros(3, 4)
    view = view_of(logits, n_latent=torch.tensor([0, 2, 5]), run=torch.tensor([0, 2, 1]))
    assert EntropyGate(0.0, max_consecutive=2)(view).tolist() == [True, False, True]
    assert EntropyGate(0.0, max_latent=5)(view).tolist() == [True, True, False]
    assert FixedGate(2)(view).tolist() == [True, False, False]
    assert TokenGate()(view).tolist() == [False] * 3 and LatentGate()(view).tolist() == [True] * 3


def table_of(weight):
    return EmbeddingTable(weight, weight.norm(dim=-1).mean())


def test_latent_modes_vectors():
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(10, 8, generator=gen)
    table = table_of(weight)
    logits = torch.randn(3, 10, generator=gen)
    hidden = torch.randn(3, 8, generator=gen) * 20
    view = view_of(logits, hidden)
    torch.testing.assert_close(HiddenLatent()(view, table), hidden)
    normed = NormedHiddenLatent()(view, table)
    torch.testing.assert_close(normed.norm(dim=-1), table.mean_norm.expand(3))
    torch.testing.assert_close(normed / normed.norm(dim=-1, keepdim=True), hidden / hidden.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(SoftLatent(1.0)(view, table), logits.softmax(-1) @ weight)
    top1 = TopKSoftLatent(k=1)(view, table)
    torch.testing.assert_close(top1, weight[logits.argmax(-1)])
    top3 = TopKSoftLatent(k=3)(view, table)
    values, ids = logits.topk(3, dim=-1)
    want = torch.einsum("bk,bkd->bd", values.softmax(-1), weight[ids])
    torch.testing.assert_close(top3, want)
    # a one-hot distribution mixes to exactly that token's embedding
    sharp = torch.full((1, 10), -1e4)
    sharp[0, 7] = 0
    torch.testing.assert_close(SoftLatent()(view_of(sharp), table)[0], weight[7])


def test_soft_latents_ignore_padded_logit_columns():
    weight = torch.randn(10, 4)
    logits = torch.randn(2, 13)
    logits[:, 10:] = 50.0  # padded vocabulary the embedding does not have
    view = view_of(logits)
    assert SoftLatent()(view, table_of(weight)).shape == (2, 4)
    torch.testing.assert_close(TopKSoftLatent(1)(view, table_of(weight)), weight[logits[:, :10].argmax(-1)])


def test_filter_logits_top_k_and_top_p_against_brute_force():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(20, 50, generator=gen) * 3
    kept = filter_logits(logits, top_k=7).isfinite()
    assert kept.sum(-1).tolist() == [7] * 20
    for p in (0.1, 0.5, 0.9):
        kept = filter_logits(logits, top_p=p).isfinite()
        probs = logits.softmax(-1)
        for row in range(20):
            order = probs[row].argsort(descending=True)
            need = int((probs[row][order].cumsum(0) < p).sum()) + 1  # smallest prefix with mass >= p
            assert set(order[:need].tolist()) == set(kept[row].nonzero()[:, 0].tolist())


def test_row_seed_is_stable_and_distinct():
    assert row_seed(0, "ex-1") == row_seed(0, "ex-1")
    assert len({row_seed(s, k) for s in range(5) for k in range(50)}) == 250
    assert 0 <= row_seed(123, "x") < 2**63


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(kind="entropy"), "needs a threshold"),
        (dict(kind="entropy", threshold=-0.5), "threshold must be"),
        (dict(kind="entropy", threshold=float("nan")), "threshold must be"),
        (dict(kind="token", threshold=1.0), "only applies to the entropy and think-router gates"),
        (dict(kind="fixed"), "needs k"),
        (dict(kind="maybe"), "unknown gate 'maybe'; valid: token, latent, entropy, fixed"),
        (dict(kind="entropy", threshold=1.0, unit="dits"), "unknown unit"),
        (dict(kind="token", max_latent=3), "only applies to the entropy gate"),
    ],
)
def test_gate_config_rejects_bad_values(bad, match):
    with pytest.raises(InputError, match=match):
        GateConfig(**bad)


def test_configs_reject_bad_values_and_unknown_keys():
    with pytest.raises(InputError, match="unknown GateConfig key.*tau.*valid: kind, threshold"):
        from_mapping(GateConfig, {"kind": "entropy", "tau": 1.0})
    with pytest.raises(InputError, match="unknown latent mode"):
        LatentConfig("mean")
    with pytest.raises(InputError, match="max_new_tokens"):
        DecodeConfig(max_new_tokens=0)
    with pytest.raises(InputError, match="top_p"):
        DecodeConfig(top_p=0.0)
    with pytest.raises(InputError, match="unknown device"):
        ModelConfig("m", device="tpu")
    assert isinstance(make_gate(from_mapping(GateConfig, {"kind": "fixed", "k": 3})), FixedGate)
    assert isinstance(make_latent(LatentConfig("topk-soft", top_k=2)), TopKSoftLatent)
    with pytest.raises(dataclasses.FrozenInstanceError):
        GateConfig().kind = "latent"
