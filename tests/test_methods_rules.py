"""The published latent-decoding rules, each checked against a literal transcription of the rule.

Every transcription below is written from the rule's statement (``latentcot.methods``, the papers'
reference code as quoted in the project notes) in plain Python/numpy loops, without the library's
helpers, and run on constructed logit sequences crafted so that every branch of the rule happens
(each test also asserts that its data did reach every branch, so the comparison means something).
Gates are driven as the engine drives them: ``gate.start(B, "cpu")`` once, then ``gate(view, state)``
per step, with the entropy of each view computed from the logits as the engine does
(``latentcot.sampling.distribution_stats``). Gates and latent modes are built from the method
registry, so the methods' wiring and defaults are checked too.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from latentcot.gates import ColdStopGate, EntropyGate, SwiReasoningGate, ThinkRouterGate, make_gate
from latentcot.latent import (
    Emitting,
    MixtureOfInputs,
    MultiplexLatent,
    RandomizedSoftLatent,
    SoftLatent,
    TopKSoftLatent,
    make_latent,
)
from latentcot.methods import parse_method
from latentcot.sampling import distribution_stats, make_generators, row_seed
from latentcot.types import EmbeddingTable, StepView

NEG = -math.inf


# ---------------------------------------------------------------------------------------------
# helpers: views as the engine builds them, embedding tables, float64 reference maths


def view_of(step, logits, n_latent=None, latent_run=None, sampled=None, generators=()):
    logits = torch.as_tensor(logits, dtype=torch.float32)
    batch = logits.shape[0]
    zeros = torch.zeros(batch, dtype=torch.long)
    _, entropy = distribution_stats(logits)  # the engine's entropy, nats, T = 1
    return StepView(
        step,
        logits,
        entropy,
        torch.zeros(batch, 4),
        zeros if n_latent is None else n_latent,
        zeros if latent_run is None else latent_run,
        torch.ones(batch, dtype=torch.bool),
        sampled,
        generators,
    )


def built(spec):
    """(gate, latent mode) of a method spec, through the registry."""
    gate_cfg, latent_cfg = parse_method(spec).configs()
    return make_gate(gate_cfg), make_latent(latent_cfg)


def drive(gate, logit_seq):
    """Decisions (T, B) of ``gate`` over a sequence of (B, V) logits, with the engine's per-row counters
    (latent steps so far, current latent run) advanced from the gate's own decisions."""
    batch = len(logit_seq[0])
    state = gate.start(batch, "cpu")
    n_latent = torch.zeros(batch, dtype=torch.long)
    run = torch.zeros(batch, dtype=torch.long)
    out = []
    for t, logits in enumerate(logit_seq):
        latent = gate(view_of(t, logits, n_latent, run), state)
        assert latent.dtype == torch.bool and latent.shape == (batch,)
        out.append(latent.tolist())
        n_latent = n_latent + latent
        run = (run + 1) * latent
    return out


def table_of(vocab, dim, seed=0, weight=None):
    """An EmbeddingTable of a real torch.nn.Embedding, and its rows as a float64 numpy array."""
    torch.manual_seed(seed)
    embed = torch.nn.Embedding(vocab, dim)
    if weight is not None:
        with torch.no_grad():
            embed.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
    table = EmbeddingTable.from_module(embed)
    return table, embed.weight.detach().double().numpy()


def softmax64(x):
    x = np.asarray(x, dtype=np.float64)
    z = np.exp(x - x.max())
    return z / z.sum()


def entropy64(p):
    return -sum(pi * math.log(pi) for pi in p if pi > 0)


def peaked(gap, vocab=8):
    """One row of logits: token 0 ahead of the others by ``gap``; the entropy falls as gap grows."""
    return [float(gap)] + [0.0] * (vocab - 1)


# ---------------------------------------------------------------------------------------------
# SwiReasoning (generate_swir)


def swir_transcription(entropies, window, max_switches):
    """entropies: per step, per row (python floats). Returns (modes per step and row, events seen)."""
    batch = len(entropies[0])
    latent = [True] * batch  # rows start in soft (latent) mode
    ref = [None] * batch
    stay = [0] * batch
    switches = [0] * batch
    modes, events = [], set()
    for t, hs in enumerate(entropies):
        for i in range(batch):
            h = hs[i]
            if t == 0:
                ref[i] = h  # the reference is H at step 0
                continue
            stay[i] += 1
            if latent[i]:
                if h < ref[i]:
                    latent[i], ref[i], stay[i] = False, h, 0
                    switches[i] += 1
                    events.add("latent->token")
                elif h == ref[i]:
                    events.add("latent stays at H == ref")
            elif h > ref[i]:
                if max_switches is not None and switches[i] >= max_switches:
                    events.add("locked in token mode")
                elif stay[i] >= window:
                    latent[i], ref[i], stay[i] = True, h, 0
                    events.add("token->latent")
                else:
                    events.add("window blocks token->latent")
            elif stay[i] >= window:
                events.add("token stays: H <= ref after the window")
        modes.append(list(latent))
    return modes, events


# gaps (higher gap = lower entropy) per step (rows 0..3); see the comments for what each row does
SWIR_GAPS = [
    # row0  row1  row2  row3
    [2.0, 3.0, 0.0, 1.0],  # t0: references
    [2.0, 2.0, 5.0, 2.0],  # t1: r0 H == ref (stays latent); r2, r3 -> token (H < ref)
    [3.0, 1.0, 5.0, 0.0],  # t2: r0 -> token; r1 H rising stays latent; r3 blocked by the window (stay 1)
    [1.0, 0.5, 5.0, 0.0],  # t3: r0 blocked (stay 1); r3 blocked (stay 2)
    [1.0, 0.0, 5.0, 0.0],  # t4: r0 blocked (stay 2); r3 -> latent (stay 3)
    [1.0, 0.0, 5.0, 4.0],  # t5: r0 -> latent (stay 3); r2 H == ref for 4 steps: stays token; r3 -> token (2nd)
    [0.5, 0.0, 5.0, 0.0],  # t6: r0 latent, H rising: stays; r3 has 2 switches: locked
    [2.0, 0.0, 5.0, 0.0],  # t7: r0 -> token (2nd switch)
    [0.0, 0.0, 0.0, 0.0],  # t8: r0 locked; r2 -> latent (stay 7, H > ref)
    [0.0, 0.0, 6.0, 0.0],  # t9: r2 -> token (2nd switch)
    [0.0, 0.0, 0.0, 0.0],  # t10: r2 locked
    [0.0, 0.0, 0.0, 0.0],
]


def entropies_of(logit_seq):
    return [distribution_stats(torch.tensor(logits))[1].tolist() for logits in logit_seq]


@pytest.mark.parametrize("window, max_switches", [(3, 2), (3, None), (0, None), (1, 1), (512, None)])
def test_swireasoning_gate_follows_generate_swir(window, max_switches):
    logit_seq = [[peaked(g) for g in row] for row in SWIR_GAPS]
    spec = f"swir:window={window}" + (f",max_switches={max_switches}" if max_switches is not None else "")
    gate, latent = built(spec)
    assert isinstance(gate, SwiReasoningGate) and (gate.window, gate.max_switches) == (window, max_switches)
    want, events = swir_transcription(entropies_of(logit_seq), window, max_switches)
    assert drive(gate, logit_seq) == want
    assert "latent->token" in events
    if (window, max_switches) == (3, 2):  # the crafted case: every branch of the rule happens
        assert events == {
            "latent->token",
            "latent stays at H == ref",
            "token->latent",
            "window blocks token->latent",
            "locked in token mode",
            "token stays: H <= ref after the window",
        }
        assert [m[0] for m in want] == [True, True, False, False, False, True, True, False, False, False, False, False]
    if window == 512:
        assert "token->latent" not in events  # the published default window: no way back within 12 steps


def test_swireasoning_method_defaults_and_soft_input():
    gate, latent = built("swir")
    assert (gate.window, gate.max_switches, gate.alpha0, gate.beta0) == (512, None, 1.0, 0.7)
    # the soft input: softmax(logits) @ E over the whole vocabulary, at T = 1; the sampled token is emitted
    assert isinstance(latent, Emitting) and latent.emits_tokens and isinstance(latent.mode, SoftLatent)
    table, weight = table_of(12, 6, seed=3)
    logits = torch.randn(3, 12, generator=torch.Generator().manual_seed(4)) * 2
    got = latent(view_of(0, logits, sampled=logits.argmax(-1)), table).double().numpy()
    for i in range(3):
        p = softmax64(logits[i].double().numpy())
        want = sum(p[j] * weight[j] for j in range(12))
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6)


def test_swireasoning_state_is_per_row_and_forkable():
    """A row's decisions do not depend on its batch-mates; a selected state continues like the original."""
    logit_seq = [[peaked(g) for g in row] for row in SWIR_GAPS]
    gate = SwiReasoningGate(window=3, max_switches=2)
    together = drive(gate, logit_seq)
    for i in range(4):
        alone = drive(gate, [[row[i]] for row in logit_seq])
        assert [m[0] for m in alone] == [m[i] for m in together]
    state = gate.start(4, "cpu")
    for t in range(6):
        gate(view_of(t, logit_seq[t]), state)
    fork = state.select(torch.tensor([3, 0]))
    rest = [gate(view_of(t, [logit_seq[t][3], logit_seq[t][0]]), fork).tolist() for t in range(6, 12)]
    assert rest == [[together[t][3], together[t][0]] for t in range(6, 12)]


# ---------------------------------------------------------------------------------------------
# Soft Thinking's Cold Stop


def cold_stop_transcription(logit_seq, bound, steps, temperature):
    batch = len(logit_seq[0])
    run, stopped = [0] * batch, [False] * batch
    modes, events = [], set()
    for logits in logit_seq:
        for i in range(batch):
            if stopped[i]:
                continue
            h = entropy64(softmax64(np.asarray(logits[i]) / temperature))  # tempered entropy
            if h < bound:
                run[i] += 1
            else:
                if run[i] > 0:
                    events.add("run reset")
                run[i] = 0
            if run[i] >= steps:
                stopped[i] = True
                events.add("cold stop")
        modes.append([not s for s in stopped])
    return modes, events


LOW, HIGH = 6.0, 2.0  # gap 6: tempered (T = 0.6) entropy ~3.5e-3 < 0.01, though H at T = 1 is ~0.12


def cold_stop_rows():
    pattern = [
        # row0: low low HIGH low low low(stop at t5) then anything: tokens for good
        [LOW, LOW, HIGH, LOW, LOW, LOW, HIGH, HIGH, LOW],
        # row1: never low
        [HIGH] * 9,
        # row2: low from the start: stops at t2
        [LOW, LOW, LOW, HIGH, HIGH, HIGH, HIGH, HIGH, HIGH],
        # row3: runs of two, always reset before three
        [LOW, LOW, HIGH, LOW, LOW, HIGH, LOW, LOW, HIGH],
    ]
    return [[peaked(pattern[i][t]) for i in range(4)] for t in range(9)]


@pytest.mark.parametrize("spec", ["soft-thinking", "random-soft", "multiplex"])
def test_cold_stop_follows_the_published_rule(spec):
    gate, _ = built(f"{spec}:cold_stop_steps=3")
    assert isinstance(gate, ColdStopGate)
    assert (gate.entropy, gate.steps, gate.temperature) == (0.01, 3, 0.6)
    logit_seq = cold_stop_rows()
    # the bound is on the *tempered* entropy: at T = 1 no step of these rows is below it
    assert all(h >= 0.01 for hs in entropies_of(logit_seq) for h in hs)
    want, events = cold_stop_transcription(logit_seq, 0.01, 3, 0.6)
    assert events == {"run reset", "cold stop"}
    got = drive(gate, logit_seq)
    assert got == want
    assert [m[0] for m in got] == [True] * 5 + [False] * 4  # row 0 stops at the step its run reaches 3
    assert [m[1] for m in got] == [True] * 9 and [m[3] for m in got] == [True] * 9
    assert [m[2] for m in got] == [True, True] + [False] * 7


def test_cold_stop_defaults_and_other_bounds():
    gate, _ = built("soft-thinking")
    assert (gate.entropy, gate.steps, gate.temperature) == (0.01, 256, 0.6)
    logit_seq = cold_stop_rows()
    assert drive(gate, logit_seq) == [[True] * 4] * 9  # 256 steps of low entropy never happen here
    # a looser bound at T = 1 (soft thinking's temperature is a parameter of the method)
    gate, _ = built("soft-thinking:temperature=1.0,cold_stop_entropy=0.2,cold_stop_steps=2")
    want, events = cold_stop_transcription(logit_seq, 0.2, 2, 1.0)
    assert "cold stop" in events and drive(gate, logit_seq) == want
    # steps = 1: the first low step already ends thinking; steps = 0: token mode from step 0
    for steps in (1, 0):
        gate = ColdStopGate(0.01, steps, 0.6)
        assert drive(gate, logit_seq) == cold_stop_transcription(logit_seq, 0.01, steps, 0.6)[0]


# ---------------------------------------------------------------------------------------------
# ThinkRouter


def think_router_transcription(logits, threshold):
    return [not (max(softmax64(row)) < threshold) for row in logits]  # token when p_max < threshold


def test_think_router_routes_on_p_max_with_ties_to_latent():
    gate, latent = built("think-router")
    assert isinstance(gate, ThinkRouterGate) and gate.threshold == 0.5
    assert isinstance(latent, TopKSoftLatent) and (latent.k, latent.temperature, latent.min_p) == (10, 0.6, 0.001)
    rows = [
        [0.0, 0.0, NEG, NEG],  # p_max exactly 0.5: not below the threshold -> latent
        [0.0, 0.0, 0.0, 0.0],  # p_max exactly 0.25 -> token
        [3.0, 0.0, 0.0, 0.0],  # p_max ~0.87 -> latent
        [0.1, 0.0, 0.0, NEG],  # p_max ~0.36 -> token
    ]
    assert max(torch.softmax(torch.tensor(rows[0]), -1).tolist()) == 0.5  # exact in fp32
    want = think_router_transcription(rows, 0.5)
    assert want == [True, False, True, False]
    assert drive(gate, [rows])[0] == want
    # the swept threshold: 0.25 exactly at the uniform row's p_max -> latent everywhere
    gate, _ = built("think-router:threshold=0.25")
    assert drive(gate, [rows])[0] == think_router_transcription(rows, 0.25) == [True] * 4
    gate, _ = built("think-router:threshold=1.0")  # only a one-hot distribution reaches 1
    assert drive(gate, [rows + [[0.0, NEG, NEG, NEG]]])[0] == [False] * 4 + [True]


def test_think_router_on_random_steps():
    gen = torch.Generator().manual_seed(5)
    logit_seq = [(torch.randn(6, 20, generator=gen) * s).tolist() for s in (0.5, 1, 2, 3, 4, 6)]
    for tau in (0.1, 0.3, 0.5, 0.7, 0.9):
        want = [think_router_transcription(logits, tau) for logits in logit_seq]
        assert drive(ThinkRouterGate(tau), logit_seq) == want
    flat = [x for logits in logit_seq for x in think_router_transcription(logits, 0.5)]
    assert any(flat) and not all(flat)


# ---------------------------------------------------------------------------------------------
# the entropy gate, direction = below


def entropy_below_transcription(logit_seq, threshold, max_consecutive, max_latent, unit="nats"):
    batch = len(logit_seq[0])
    n_latent, run = [0] * batch, [0] * batch
    modes, events = [], set()
    for logits in logit_seq:
        step = []
        for i in range(batch):
            h = entropy64(softmax64(logits[i]))
            if unit == "normalized":
                h /= math.log(len(logits[i]))
            want = h < threshold
            latent = want
            if max_consecutive is not None and run[i] >= max_consecutive:
                latent = False
            if max_latent is not None and n_latent[i] >= max_latent:
                latent = False
            if want and not latent:
                events.add("cap")
            if want and latent:
                events.add("latent")
            if not want:
                events.add("token")
            n_latent[i] += latent
            run[i] = run[i] + 1 if latent else 0
            step.append(latent)
        modes.append(step)
    return modes, events


def test_entropy_gate_below_with_caps():
    gate, _ = built("entropy:threshold=1.0,direction=below,max_consecutive=2,max_latent=5")
    assert isinstance(gate, EntropyGate) and gate.direction == "below"
    # H of peaked(g) over 8 tokens: g = 0 -> log 8 ~ 2.08 (token); g = 5 -> ~0.3 (latent)
    pattern = [
        [5, 5, 5, 5, 5, 5, 5, 5, 5, 5],  # always low: runs of 2 (max_consecutive), then max_latent = 5
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # always high: never latent
        [5, 0, 5, 0, 5, 5, 0, 5, 5, 5],  # mixed
    ]
    logit_seq = [[peaked(pattern[i][t]) for i in range(3)] for t in range(10)]
    want, events = entropy_below_transcription(logit_seq, 1.0, 2, 5)
    assert events == {"cap", "latent", "token"}
    got = drive(gate, logit_seq)
    assert got == want
    assert [m[0] for m in got] == [True, True, False, True, True, False, True, False, False, False]
    assert not any(m[1] for m in got)


def test_entropy_gate_below_normalized_and_exactly_at_the_threshold():
    gen = torch.Generator().manual_seed(6)
    logit_seq = [(torch.randn(5, 16, generator=gen) * s).tolist() for s in (0.3, 1, 2, 4, 8)]
    gate, _ = built("entropy:threshold=0.5,unit=normalized,direction=below")
    want, events = entropy_below_transcription(logit_seq, 0.5, None, None, unit="normalized")
    assert {"latent", "token"} <= events and drive(gate, logit_seq) == want
    # H exactly at tau is neither above nor below: token in both directions
    rows = [peaked(3.0), peaked(0.5)]
    tau = float(distribution_stats(torch.tensor(rows))[1][0])
    below, _ = built(f"entropy:threshold={tau!r},direction=below")
    above, _ = built(f"entropy:threshold={tau!r}")
    assert drive(below, [rows])[0] == [False, False]
    assert drive(above, [rows])[0] == [False, True]


# ---------------------------------------------------------------------------------------------
# Soft Thinking's soft input: top-k after temperature, min-p, renormalised


def soft_thinking_transcription(logits, weight, top_k, temperature, min_p):
    p = softmax64(np.asarray(logits, dtype=np.float64) / temperature)  # full vocabulary, tempered
    ranked = sorted(range(len(p)), key=lambda j: -p[j])
    order = ranked[:top_k]
    p_max = p[order[0]]
    kept = [j for j in order if not p[j] < min_p * p_max]
    total = sum(p[j] for j in kept)
    vector = sum(p[j] / total * weight[j] for j in kept)
    # "cut by top_k": a token past the k-th that min-p alone would have kept
    cut = len(ranked) > top_k and not p[ranked[top_k]] < min_p * p_max
    return vector, {"dropped by min_p": len(kept) < len(order), "cut by top_k": cut}


def soft_thinking_rows(vocab):
    gen = torch.Generator().manual_seed(7)
    base = (torch.rand(4, vocab, generator=gen) * -3).tolist()  # everything else far below
    row0 = list(base[0])  # 4 near the top, 6 more in the top 10 but under min_p x p_max at T = 0.6
    for j, v in zip(range(10), [10.0, 9.5, 9.0, 8.0, 5.5, 5.4, 5.3, 5.2, 5.1, 5.0]):
        row0[j * 3] = v
    row1 = list(base[1])  # 12 close tokens: top-k cuts two, min_p drops none
    for j in range(12):
        row1[j * 2 + 1] = 10.0 - 0.2 * j
    row2 = (torch.randn(vocab, generator=gen) * 3).tolist()
    row3 = list(base[3])  # one dominant token: every other is dropped -> exactly its embedding
    row3[5] = 20.0
    return [row0, row1, row2, row3]


def test_soft_thinking_input_top_k_temperature_min_p():
    table, weight = table_of(40, 16, seed=8)
    _, latent = built("soft-thinking")
    rows = soft_thinking_rows(40)
    got = latent(view_of(0, rows), table).double().numpy()
    branches = []
    for i, row in enumerate(rows):
        want, seen = soft_thinking_transcription(row, weight, 10, 0.6, 0.001)
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6)
        branches.append(seen)
    assert branches[0] == {"dropped by min_p": True, "cut by top_k": False}
    assert branches[1] == {"dropped by min_p": False, "cut by top_k": True}
    np.testing.assert_array_equal(got[3], weight[5].astype(np.float32))  # only the top token is left


@pytest.mark.parametrize("params", ["min_p=0.1", "top_k=3,temperature=1.0", "min_p=0,top_k=40", "min_p=1"])
def test_soft_thinking_input_other_parameters(params):
    table, weight = table_of(40, 16, seed=9)
    choice = parse_method(f"soft-thinking:{params}")
    values = dict(choice.params)
    _, latent = built(f"soft-thinking:{params}")
    rows = soft_thinking_rows(40)
    got = latent(view_of(0, rows), table).double().numpy()
    for i, row in enumerate(rows):
        want, _ = soft_thinking_transcription(row, weight, values["top_k"], values["temperature"], values["min_p"])
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Mixture of Inputs


def moi_transcription(logits, sampled, weight, k, beta):
    order = sorted(range(len(logits)), key=lambda j: -logits[j])[:k]
    p = softmax64([logits[j] for j in order])  # top-k probabilities, renormalised
    h_n = entropy64(p) / math.log(k)
    q = [(p[n] + beta * (1.0 if order[n] == sampled else 0.0)) / (1 + beta) for n in range(k)]
    mixture = sum(q[n] * weight[order[n]] for n in range(k))
    return h_n * mixture + (1 - h_n) * weight[sampled], sampled in order


@pytest.mark.parametrize("params", ["", "beta=0", "beta=2.5", "top_k=5", "top_k=30,beta=0.5"])
def test_mixture_of_inputs_follows_the_reference_runner(params):
    vocab = 30
    table, weight = table_of(vocab, 16, seed=10)
    _, latent = built(f"moi:{params}" if params else "moi")
    values = dict(parse_method(f"moi:{params}" if params else "moi").params)
    assert isinstance(latent, Emitting) and latent.emits_tokens and isinstance(latent.mode, MixtureOfInputs)
    gen = torch.Generator().manual_seed(11)
    logits = (torch.randn(5, vocab, generator=gen) * torch.tensor([[0.5], [1.0], [2.0], [3.0], [6.0]])).tolist()
    order = [sorted(range(vocab), key=lambda j, r=r: -r[j]) for r in logits]
    sampled = [
        order[0][0],  # the argmax
        order[1][3],  # inside the top k, not the argmax
        order[2][-1],  # the least likely token: outside any top k < V
        order[3][1],
        order[4][-2],
    ]
    got = latent(view_of(0, logits, sampled=torch.tensor(sampled)), table).double().numpy()
    inside = []
    for i in range(5):
        want, is_inside = moi_transcription(logits[i], sampled[i], weight, values["top_k"], values["beta"])
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6)
        inside.append(is_inside)
    if values["top_k"] < vocab:
        assert inside[0] and inside[1] and not inside[2]  # both branches of the one-hot
    if not params:
        assert values == {"top_k": 20, "beta": 1.0}  # the reference runner's top-20 and MIXINPUTS_BETA


def test_mixture_of_inputs_limits():
    """A one-hot top-k distribution (H_n = 0) feeds exactly the sampled token's embedding."""
    table, weight = table_of(30, 8, seed=12)
    logits = [[0.0] * 30, [0.0] * 30]
    logits[0][4] = 200.0  # p over the top 20 is one-hot: H_n = 0
    logits[1] = [float(-j) * 1e-9 for j in range(30)]  # near-uniform top 20: H_n ~ 1
    latent = MixtureOfInputs(20, 1.0)
    got = latent(view_of(0, logits, sampled=torch.tensor([4, 0])), table).double().numpy()
    np.testing.assert_allclose(got[0], weight[4], atol=1e-6)
    want = 0.5 * sum(weight[j] for j in range(20)) / 20 + 0.5 * weight[0]  # q = (1/20 + onehot)/2, H_n = 1
    np.testing.assert_allclose(got[1], want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Randomized Soft Thinking


def gumbel_uniforms(seed, step, vocab):
    """The uniforms the implementation documents for a row: a generator seeded from (the row generator's
    seed, the step), here for the purpose "gumbel"."""
    return torch.rand(vocab, generator=torch.Generator().manual_seed(row_seed(seed, f"gumbel{step}"))).double().numpy()


def random_soft_transcription(logits, u, weight, tau):
    logp = np.log(softmax64(logits))
    g = [-math.log(-math.log(x)) for x in u]
    w = softmax64([(logp[j] + g[j]) / tau for j in range(len(logits))])
    return sum(w[j] * weight[j] for j in range(len(logits))), int(np.argmax(logp + np.asarray(g)))


def test_randomized_soft_thinking_given_the_same_uniforms():
    _, latent = built("random-soft")
    assert isinstance(latent, RandomizedSoftLatent) and latent.temperature == 0.5
    table, weight = table_of(24, 8, seed=13)
    seeds = [3, 17, 2**40 + 5]
    logits = (torch.randn(3, 24, generator=torch.Generator().manual_seed(14)) * 2).tolist()
    for step in (0, 1, 7):
        got = latent(view_of(step, logits, generators=make_generators(seeds, "cpu")), table).double().numpy()
        for i, seed in enumerate(seeds):
            want, _ = random_soft_transcription(logits[i], gumbel_uniforms(seed, step, 24), weight, 0.5)
            np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-5)


def test_randomized_soft_thinking_is_gumbel_max_as_tau_goes_to_zero():
    """tau -> 0: the input is the one-hot embedding of argmax(log p + g), and that argmax is distributed
    as p (the Gumbel-max trick); checked without reproducing the noise."""
    probs = [0.5, 0.25, 0.15, 0.1]
    identity = np.eye(4)
    table, _ = table_of(4, 4, weight=identity)
    latent = RandomizedSoftLatent(temperature=1e-6)
    logits = [[math.log(p) for p in probs]] * 40
    counts = np.zeros(4)
    for step in range(40):
        generators = make_generators(range(1000, 1040), "cpu")
        got = latent(view_of(step, logits, generators=generators), table).double().numpy()  # (40, 4)
        assert np.allclose(got.max(-1), 1.0, atol=1e-6) and np.allclose(got.sum(-1), 1.0, atol=1e-6)
        counts += np.round(got).sum(0)
        if step == 3:  # and it is the argmax of the documented noise
            for i in range(40):
                _, winner = random_soft_transcription(logits[i], gumbel_uniforms(1000 + i, 3, 4), identity, 1e-6)
                assert int(np.argmax(got[i])) == winner
    assert counts.sum() == 1600
    assert scipy.stats.chisquare(counts, np.asarray(probs) * 1600).pvalue > 1e-3


@pytest.mark.parametrize("mode", [RandomizedSoftLatent(0.5), MultiplexLatent(3)])
def test_noisy_inputs_are_per_row_reproducible_and_leave_the_sampler_alone(mode):
    table, _ = table_of(24, 8, seed=15)
    logits = (torch.randn(3, 24, generator=torch.Generator().manual_seed(16)) * 1.5).tolist()

    def run(seeds, rows, step=2):
        generators = make_generators(seeds, "cpu")
        states = [g.get_state() for g in generators]
        out = mode(view_of(step, rows, generators=generators), table)
        assert all(torch.equal(g.get_state(), s) for g, s in zip(generators, states))  # the sampling stream
        return out

    first = run([1, 2, 3], logits)
    torch.testing.assert_close(run([1, 2, 3], logits), first, rtol=0, atol=0)  # reproducible
    assert not torch.allclose(run([4, 2, 3], logits)[0], first[0])  # another seed, other noise
    assert not torch.allclose(run([1, 2, 3], logits, step=3), first)  # another step, other noise
    alone = run([2], [logits[1]])  # batch-mates do not matter
    torch.testing.assert_close(alone[0], first[1], rtol=0, atol=0)
    swapped = run([3, 2], [logits[2], logits[1]])
    torch.testing.assert_close(swapped, first[[2, 1]], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Multiplex Thinking


def multiplex_counts(logits, seeds, width, step):
    """The K samples of each row, read off a one-hot embedding table (input = counts / K)."""
    vocab = len(logits[0])
    table, _ = table_of(vocab, vocab, weight=np.eye(vocab))
    out = MultiplexLatent(width, "mean")(view_of(step, logits, generators=make_generators(seeds, "cpu")), table)
    counts = out.double().numpy() * width
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-4)  # whole samples
    return np.round(counts).astype(int)


def test_multiplex_mean_is_the_average_of_k_sampled_embeddings():
    _, latent = built("multiplex")
    assert isinstance(latent, MultiplexLatent) and (latent.width, latent.merge) == (3, "mean")
    logits = [
        [0.0, 0.0, NEG, NEG, NEG, NEG],  # two tokens at 1/2: with K = 3 one of them repeats
        [1.0, 0.5, 0.0, -0.5, NEG, NEG],
        [2.0, 1.0, 0.0, 0.0, 1.0, 0.5],
        [0.0, NEG, NEG, NEG, NEG, NEG],  # one-hot: all K agree
    ]
    seeds = [21, 22, 23, 24]
    table, weight = table_of(6, 5, seed=25)
    for step in range(6):
        counts = multiplex_counts(logits, seeds, 3, step)
        assert (counts.sum(-1) == 3).all()
        assert (counts[:, [2, 3, 4, 5]][0] == 0).all() and (counts[1, 4:] == 0).all()  # never a p = 0 token
        assert counts[0].max() >= 2 and counts[3].tolist() == [3, 0, 0, 0, 0, 0]  # repeats are counted
        got = latent(view_of(step, logits, generators=make_generators(seeds, "cpu")), table).double().numpy()
        for i in range(4):
            want = sum(counts[i][j] * weight[j] for j in range(6)) / 3
            np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[3], weight[0], rtol=1e-6, atol=0)  # that token's embedding (to fp32 rounding)


def test_multiplex_weighted_merge_and_width():
    logits = [[1.0, 0.5, 0.0, -0.5, -1.0, NEG], [2.0, 1.0, 0.0, 0.0, 1.0, 0.5]]
    seeds = [31, 32]
    table, weight = table_of(6, 5, seed=33)
    _, weighted = built("multiplex:merge=weighted,width=5")
    assert (weighted.width, weighted.merge) == (5, "weighted")
    for step in range(5):
        counts = multiplex_counts(logits, seeds, 5, step)  # the same draws: sampling does not depend on the merge
        got = weighted(view_of(step, logits, generators=make_generators(seeds, "cpu")), table).double().numpy()
        for i in range(2):
            p = softmax64(logits[i])
            samples = [j for j in range(6) for _ in range(counts[i][j])]  # the K samples, repeats included
            total = sum(p[j] for j in samples)
            want = sum(p[j] / total * weight[j] for j in samples)
            np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6)


def test_multiplex_samples_are_distributed_as_p():
    probs = [0.4, 0.3, 0.2, 0.1]
    logits = [[math.log(p) for p in probs]] * 50
    counts = sum(multiplex_counts(logits, range(500, 550), 4, step).sum(0) for step in range(10))
    assert counts.sum() == 50 * 10 * 4
    assert scipy.stats.chisquare(counts, np.asarray(probs) * counts.sum()).pvalue > 1e-3


# ---------------------------------------------------------------------------------------------
# SwiReasoning with thought markers: the whole generate_swir input rule, end to end through the engine


def swir_reference_generate(model, tokenizer, prompt, n_steps, window, alpha0, beta0, begin, end):
    """generate_swir transcribed for one row, greedy and without a KV cache (every step re-runs the
    whole input sequence). Returns (mode per step as latentcot records it, argmax tokens, entropies,
    events). The reference's first-step "\\n" blend and math-token forcing are left out, as in the
    library."""
    E = model.get_input_embeddings().weight.detach().double()  # (V, D); llama: no embedding scale
    x = E[tokenizer(prompt)["input_ids"]]  # (T, D)
    soft_mode, locked, stay, ref = True, False, 0, None
    modes, tokens, entropies, events = [], [], [], set()
    with torch.no_grad():
        for step in range(n_steps):
            logits = model(inputs_embeds=x[None].to(model.dtype)).logits[0, -1].double()
            p = torch.softmax(logits, -1)
            h = float(-(p * p.clamp(min=1e-12).log()).sum())
            tok = int(p.argmax())
            if tok == end:
                locked = True
                events.add("locked by the end marker")
            to_soft = to_normal = False
            if step == 0:
                ref = h
            else:
                stay += 1
                to_normal = soft_mode and h < ref
                to_soft = (not soft_mode) and h > ref and stay >= window and not locked
                if to_normal or to_soft:
                    soft_mode, stay, ref = to_soft, 0, h
                    events.add("to token" if to_normal else "to latent")
            is_normal = (not soft_mode) or locked
            soft = p @ E
            alpha = alpha0 + (1 - alpha0) * step / n_steps
            beta = beta0 + (1 - beta0) * step / n_steps
            if to_soft:
                soft = alpha * soft + (1 - alpha) * E[begin]
            normal = beta * soft + (1 - beta) * E[end] if to_normal else E[tok]
            x = torch.cat([x, (normal if is_normal else soft)[None]])
            modes.append("latent" if (not is_normal or to_normal) else "token")
            tokens.append(tok)
            entropies.append(h)
    return modes, tokens, entropies, events


def test_swireasoning_marker_blend_and_lock_follow_generate_swir(models64, tokenizer):
    from latentcot.config import DecodeConfig
    from latentcot.engine import Engine

    model, n, window, alpha0, beta0 = models64["llama"], 24, 2, 0.5, 0.6
    engine = Engine(model, tokenizer)
    begin = tokenizer.convert_tokens_to_ids("<bot>")
    spec = f"swir:window={window},alpha0={alpha0},beta0={beta0}"
    gate, latent = built(spec)
    checked = 0
    # the end marker is a character the model does emit, so that the lock happens somewhere
    probe_modes, probe_tokens, _, _ = swir_reference_generate(model, tokenizer, "12+7=", n, window, 0.5, 0.6, begin, 5)
    for end in dict.fromkeys(probe_tokens[3:]):
        want_modes, want_tokens, want_h, events = swir_reference_generate(
            model, tokenizer, "12+7=", n, window, alpha0, beta0, begin, end
        )
        cfg = DecodeConfig(max_new_tokens=n, markers=("<bot>", tokenizer.convert_ids_to_tokens(end)), ignore_eos=True)
        (trace,) = engine.generate(["12+7="], gate, latent, cfg)
        assert trace.mode == want_modes and trace.token_id == want_tokens, end
        np.testing.assert_allclose(trace.entropy, want_h, rtol=1e-5, atol=0)  # fp32 entropies
        checked += 1
        if events == {"to token", "to latent", "locked by the end marker"}:
            break
    else:
        pytest.fail(f"no end marker among {checked} made every branch happen")
    # markers blended, never inserted; with alpha0 = beta0 = 1 and no markers the inputs differ
    assert "marker" not in trace.mode
    (plain,) = engine.generate(["12+7="], gate, latent, DecodeConfig(max_new_tokens=n, ignore_eos=True))
    assert plain.entropy != trace.entropy
