"""Prefix-shared decoding: a tree of arms gives every arm the trace it gets alone, and forks where it should."""

from __future__ import annotations

import math

import pytest
import torch

from latentcot.config import DecodeConfig
from latentcot.engine import Engine
from latentcot.gates import (
    ColdStopGate,
    EntropyGate,
    FixedGate,
    LatentGate,
    SwiReasoningGate,
    ThinkRouterGate,
    TokenGate,
)
from latentcot.latent import HiddenLatent, MultiplexLatent, RandomizedSoftLatent, SoftLatent, TopKSoftLatent
from latentcot.tree import Arm, Choice, Tree, copy_generators, input_keys

PROMPTS = ["12+7=", "Every cat is a mammal. Is Tom a cat?", "x", "3*4="]
SEEDS = [11, 12, 13, 14]


def thresholds(engine, n=6):
    """Entropy thresholds spread over the quantiles of the model's own step entropies."""
    probe = engine.generate(PROMPTS, TokenGate(), HiddenLatent(), DecodeConfig(max_new_tokens=16), seed=SEEDS)
    h = torch.tensor([x for trace in probe for x in trace.entropy])
    return [round(float(q), 4) for q in h.quantile(torch.linspace(0.1, 0.9, n, dtype=h.dtype))]


def assert_tree_equals_alone(engine, arms, cfg, measure=(), max_rows=None):
    tree = engine.decode_tree(PROMPTS, arms, cfg, SEEDS, measure, max_rows)
    separate = 0
    for k, arm in enumerate(arms):
        alone = engine.generate(PROMPTS, arm.gate, arm.latent, cfg, seed=SEEDS, measure=measure)
        for i, want in enumerate(alone):
            if (i, k) not in tree.traces:
                assert (i, k) in {(p, a) for p, spilled in tree.spilled for a in spilled}
                continue
            got = tree.traces[(i, k)]
            separate += want.n_steps
            assert got.mode == want.mode and got.token_id == want.token_id, (k, i)
            assert got.completion == want.completion and got.finish_reason == want.finish_reason
            torch.testing.assert_close(torch.tensor(got.entropy), torch.tensor(want.entropy), atol=1e-6, rtol=0)
            assert got.extra.keys() == want.extra.keys()
            for name, values in want.extra.items():
                if name == "lens_top":
                    assert got.extra[name] == values
                    continue
                nan = float("nan")
                a = torch.tensor([nan if v is None else v for v in got.extra[name]], dtype=torch.float64)
                b = torch.tensor([nan if v is None else v for v in values], dtype=torch.float64)
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, equal_nan=True)
    return tree, separate


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3_text"])  # gemma3: sliding-window cache layers
@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
def test_entropy_threshold_family_shares_and_equals_each_alone(models64, tokenizer, arch, sampled):
    from latentcot.zoo.tiny import tiny_model

    model = models64[arch] if arch in models64 else tiny_model(arch, tokenizer, seed=1, init_std=0.2).double()
    engine = Engine(model, tokenizer)
    soft = SoftLatent()
    arms = [Arm(TokenGate(), soft), Arm(LatentGate(), soft), *(Arm(EntropyGate(t), soft) for t in thresholds(engine))]
    cfg = DecodeConfig(max_new_tokens=16, temperature=1.0 if sampled else 0.0)
    tree, separate = assert_tree_equals_alone(engine, arms, cfg)
    assert len(PROMPTS) < tree.trajectories < len(PROMPTS) * len(arms)  # it forked, and it shared
    assert tree.forward_rows < separate


def test_methods_markers_caps_and_stateful_gates_share(models64, tokenizer):
    """Different latent modes, inserted markers, caps, stateful and random rules in one tree."""
    engine = Engine(models64["llama"], tokenizer)
    tau = thresholds(engine, 3)
    soft, topk = SoftLatent(), TopKSoftLatent(4, 0.6, 0.001)
    arms = [
        Arm(TokenGate(), soft),
        Arm(EntropyGate(tau[0], max_consecutive=2), soft, "soft"),
        Arm(EntropyGate(tau[1], max_latent=3), soft, "soft"),
        Arm(EntropyGate(tau[1]), HiddenLatent(), "hidden"),
        Arm(FixedGate(2), HiddenLatent(), "hidden"),
        Arm(FixedGate(3), HiddenLatent(), "hidden"),
        Arm(ThinkRouterGate(0.05), topk),
        Arm(ColdStopGate(3.9, 2, 0.6), topk),
        Arm(SwiReasoningGate(window=2), soft),
        Arm(ColdStopGate(3.9, 3, 0.6), RandomizedSoftLatent(0.5)),
        Arm(LatentGate(), MultiplexLatent(3)),
    ]
    for cfg in (DecodeConfig(max_new_tokens=14), DecodeConfig(max_new_tokens=14, markers=("<bot>", "<eot>"))):
        tree, separate = assert_tree_equals_alone(engine, arms, cfg)
        assert tree.forward_rows < separate


def test_counterfactual_measure_and_sampling_in_a_tree(models64, tokenizer):
    engine = Engine(models64["qwen2"], tokenizer)
    soft = SoftLatent()
    arms = [Arm(TokenGate(), soft), *(Arm(EntropyGate(t), soft) for t in thresholds(engine, 4))]
    cfg = DecodeConfig(max_new_tokens=12, temperature=0.9, top_p=0.95)
    assert_tree_equals_alone(engine, arms, cfg, measure=("counterfactual",))


def test_a_full_tree_spills_arms_instead_of_growing(models64, tokenizer):
    engine = Engine(models64["llama"], tokenizer)
    soft = SoftLatent()
    arms = [Arm(TokenGate(), soft), Arm(LatentGate(), soft), *(Arm(EntropyGate(t), soft) for t in thresholds(engine))]
    cfg = DecodeConfig(max_new_tokens=16)
    tree, _ = assert_tree_equals_alone(engine, arms, cfg, max_rows=len(PROMPTS) + 2)
    assert tree.spilled and tree.peak_rows == len(PROMPTS) + 2  # finished rows leave and make room for forks
    covered = {(i, k) for i, k in tree.traces} | {(i, k) for i, ks in tree.spilled for k in ks}
    assert covered == {(i, k) for i in range(len(PROMPTS)) for k in range(len(arms))}
    assert not {(i, k) for i, k in tree.traces} & {(i, k) for i, ks in tree.spilled for k in ks}


# ---------------------------------------------------------------------------------------------
# fork bookkeeping on constructed entropy sequences


def drive_tree(entropies, taus):
    """Entropy gates at ``taus`` (plus token and latent ends) on rows whose entropy per step is given;
    every row samples token 5. Returns, per step, the arms each row carries and each row's parent."""
    from latentcot.types import StepView

    arms = [TokenGate(), *(EntropyGate(t) for t in taus), LatentGate()]
    batch = len(entropies[0])
    tree = Tree.start(batch, len(arms), "cpu")
    history = []
    rows_entropy = torch.tensor(entropies[0])
    for t, step_entropy in enumerate(entropies):
        # each row continues its parent's prompt: its entropy is that of its prompt at this step
        h = torch.tensor(step_entropy)[tree.prompt] if t else rows_entropy
        n = h.shape[0]
        zeros = torch.zeros(n, dtype=torch.long)
        view = StepView(t, torch.zeros(n, 8), h, torch.zeros(n, 4), zeros, zeros, torch.ones(n, dtype=torch.bool))
        sampled = torch.full((n,), 5)
        decisions = torch.stack([gate(view) for gate in arms])  # (K, B)
        choice = Choice(decisions, torch.zeros_like(decisions), sampled.expand_as(decisions), decisions, decisions)
        keys = input_keys(choice, torch.zeros(len(arms), dtype=torch.long), torch.zeros(*decisions.shape, 2))
        parent = tree.split(keys, torch.ones(n, dtype=torch.bool), None)
        carried = [tuple(k for k, on in enumerate(col) if on) for col in tree.carried.T.tolist()]
        history.append((carried, None if parent is None else parent.tolist()))
    return history


def test_rows_fork_where_the_entropy_falls_between_thresholds():
    taus = [0.5, 1.0, 1.5]  # arms: 0 token, 1 τ=0.5, 2 τ=1.0, 3 τ=1.5, 4 latent
    history = drive_tree([[0.2], [0.7], [1.2], [2.0]], taus)
    # t0: H=0.2 is below every τ: latent-only is the one arm feeding a latent
    assert history[0] == ([(0, 1, 2, 3), (4,)], [0, 0])
    # t1: H=0.7 splits the token group: τ=0.5 goes latent
    assert history[1] == ([(0, 2, 3), (1,), (4,)], [0, 0, 1])
    # t2: H=1.2 splits again: τ=1.0 leaves; the single-arm rows cannot fork
    assert history[2] == ([(0, 3), (2,), (1,), (4,)], [0, 0, 1, 2])
    # t3: H=2.0 above τ=1.5: the last split; one row per arm now
    assert history[3] == ([(0,), (3,), (2,), (1,), (4,)], [0, 0, 1, 2, 3])


def test_no_fork_while_every_arm_agrees():
    history = drive_tree([[0.1, 3.0]] * 3, [0.5, 1.0])
    # row 0 (H=0.1): token and both τ agree, latent leaves; row 1 (H=3.0): all latent but token
    assert history[0] == ([(0, 1, 2), (3,), (0,), (1, 2, 3)], [0, 0, 1, 1])
    assert history[1][1] is None and history[2][1] is None  # nothing forks again: every row agrees


def test_forked_generators_continue_the_same_stream():
    g = torch.Generator().manual_seed(7)
    torch.rand(3, generator=g)
    kept, copy = copy_generators([g], [0, 0])
    assert kept is g and copy is not g and copy.initial_seed() == g.initial_seed()
    assert torch.equal(torch.rand(4, generator=kept), torch.rand(4, generator=copy))


def test_single_arm_rows_have_inf_and_minus_inf_ends():
    """Token-only and latent-only are the τ = +inf and τ = -inf ends of one threshold family."""
    history = drive_tree([[0.0], [5.0]], [math.inf])
    assert history[-1][0] == [(0, 1), (2,)]


def test_emitted_steps_only_in_the_records_of_methods_that_emit(models64, tokenizer):
    from latentcot.latent import Emitting, MixtureOfInputs

    engine = Engine(models64["llama"], tokenizer)
    arms = [Arm(TokenGate(), SoftLatent()), Arm(LatentGate(), Emitting(MixtureOfInputs(4)))]
    tree, _ = assert_tree_equals_alone(engine, arms, DecodeConfig(max_new_tokens=8))
    assert all(("emitted" in trace.extra) == (k == 1) for (_, k), trace in tree.traces.items())
