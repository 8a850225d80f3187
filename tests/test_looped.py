"""Looped models: equivalence with unrolled Llama, weight sharing, saving, cached decoding, adaptive exit."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

from latentcot.config import DecodeConfig, GateConfig, LatentConfig, ModelConfig, setting_id, setting_of
from latentcot.engine import Engine
from latentcot.errors import InputError
from latentcot.gates import EntropyGate, TokenGate
from latentcot.latent import HiddenLatent
from latentcot.looping import LoopConfig, loops_used, parse_exit
from latentcot.model import load_model
from latentcot.zoo.looped import LoopedConfig, LoopedForCausalLM, is_looped, parse_arch_spec, training_loops
from latentcot.zoo.tiny import tiny_model
from test_cli import cli, records
from test_engine import PROMPTS, Recording, reference_decode

SIZE = dict(hidden=32, heads=2, init_std=0.2)


def looped(tokenizer, spec: str, seed: int = 1):
    return tiny_model(spec, tokenizer, seed=seed, **SIZE)


def unrolled_llama(model: LoopedForCausalLM, loops: int | None = None):
    """A plain Llama whose layers are prelude, the block repeated ``loops`` times, coda (weights copied)."""
    cfg = model.config
    loops = loops or cfg.loops
    fields = {
        k: v
        for k, v in cfg.to_dict().items()
        if k in LlamaConfig().to_dict()
        and k not in ("model_type", "architectures", "transformers_version", "num_hidden_layers")
    }
    plain = AutoModelForCausalLM.from_config(LlamaConfig(**fields, num_hidden_layers=cfg.depth(loops)))
    inner = model.model
    order = [*inner.prelude, *list(inner.block) * loops, *inner.coda]
    state = {
        "model.embed_tokens.weight": inner.embed_tokens.weight,
        "model.norm.weight": inner.norm.weight,
        "lm_head.weight": model.lm_head.weight,
    }
    for i, layer in enumerate(order):
        state.update({f"model.layers.{i}.{name}": p for name, p in layer.state_dict().items()})
    plain.load_state_dict(state, strict=True)
    return plain.to(model.dtype).eval()


def batch(tokenizer):
    return tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="left")


def logits(model, enc, **kw):
    positions = (enc["attention_mask"].cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        return model(**enc, position_ids=positions, **kw).logits


@pytest.mark.parametrize(
    "spec,loops",
    [
        ("looped:k=2,L=1", None),
        ("looped:k=2,L=3", None),
        ("looped:k=1,L=2,prelude=1,coda=1", None),
        ("looped:k=2,L=2", 4),
    ],
)
def test_looped_equals_llama_with_the_block_repeated(tokenizer, spec, loops):
    model = looped(tokenizer, spec)
    enc = batch(tokenizer)
    plain = unrolled_llama(model, loops)
    looping = {"looping": LoopConfig(loops=loops)} if loops else {}
    torch.testing.assert_close(logits(model, enc, **looping), logits(plain, enc), atol=1e-5, rtol=1e-5)


def test_shapes_weight_sharing_and_depth(tokenizer):
    sizes = {
        L: sum(p.numel() for p in looped(tokenizer, f"looped:k=2,L={L},prelude=1").parameters()) for L in (1, 4, 8)
    }
    assert len(set(sizes.values())) == 1, sizes  # one parameter set for the block
    model = looped(tokenizer, "looped:k=2,L=3,prelude=1,coda=1")
    assert model.config.num_hidden_layers == 1 + 2 * 3 + 1
    assert not any(".block.2." in name for name in model.state_dict())
    enc = batch(tokenizer)
    out = model(**enc, output_hidden_states=True)
    assert out.logits.shape == (*enc["input_ids"].shape, len(tokenizer))
    assert out.loops.tolist() == [[3] * enc["input_ids"].shape[1]] * len(PROMPTS)
    assert len(out.hidden_states) == 1 + 8
    # injection variants change the computation but not the interface
    for inject in ("add", "concat"):
        other = looped(tokenizer, f"looped:k=1,L=3,inject={inject}")
        assert other(**enc).logits.shape == out.logits.shape
    assert looped(tokenizer, "looped:k=1,L=3,inject=concat").model.adapter is not None


def test_save_and_load_through_auto_classes(tmp_path, tokenizer):
    model = looped(tokenizer, "looped:k=2,L=3,prelude=1,inject=add")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "looped"
    assert isinstance(AutoConfig.from_pretrained(tmp_path), LoopedConfig)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(again, LoopedForCausalLM) and again.config.loops == 3 and again.config.inject == "add"
    enc = batch(tokenizer)
    torch.testing.assert_close(logits(again, enc), logits(model, enc))
    loaded = load_model(ModelConfig(str(tmp_path), device="cpu"))
    assert is_looped(loaded.model) and loaded.identity["model_type"] == "looped"


def test_learned_positions_are_absolute_and_survive_save_and_load(tmp_path, tokenizer):
    enc = batch(tokenizer)
    positions = (enc["attention_mask"].cumsum(-1) - 1).clamp_min(0)

    def shift_gap(model):
        with torch.no_grad():
            return (
                (model(**enc, position_ids=positions).logits - model(**enc, position_ids=positions + 7).logits)
                .abs()
                .max()
                .item()
            )

    rope, learned = looped(tokenizer, "looped:k=2,L=2"), looped(tokenizer, "looped:k=2,L=2,pos=learned")
    assert shift_gap(rope) < 1e-5  # rotary attention sees only relative positions
    assert shift_gap(learned) > 1e-2
    assert sum(p.numel() for p in learned.parameters()) - sum(p.numel() for p in rope.parameters()) == (
        learned.config.max_position_embeddings * learned.config.hidden_size
    )
    learned.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert again.config.positions == "learned"
    torch.testing.assert_close(logits(again, enc), logits(learned, enc))


class WithLooping:
    """A looped model called with fixed ``looping`` (for the cache-free reference decoder)."""

    def __init__(self, model, looping):
        self.model, self.looping = model, looping

    def __call__(self, **kwargs):
        return self.model(**kwargs, looping=self.looping)

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()


@pytest.mark.parametrize(
    "spec,looping",
    [
        ("looped:k=2,L=2", None),
        ("looped:k=1,L=2,prelude=1,coda=1,inject=add", LoopConfig(loops=4)),
        ("looped:k=1,L=6,inject=add", LoopConfig(exit="kl", epsilon=1e-2)),
        ("looped:k=1,L=4,inject=concat,prelude=1", LoopConfig(exit="argmax")),
        ("looped:k=1,L=6,inject=add,pos=learned", LoopConfig(exit="kl", epsilon=1e-2)),
    ],
    ids=["plain", "override-deeper", "kl-exit", "argmax-exit", "learned-positions"],
)
def test_cached_decoding_matches_cache_free_recomputation(tokenizer, spec, looping):
    model = looped(tokenizer, spec).double()
    decode = DecodeConfig(max_new_tokens=10, loop=looping)
    engine = Engine(model, tokenizer)
    # token mode, greedy
    traces = engine.generate(PROMPTS, TokenGate(), HiddenLatent(), decode)
    ref_logits, _ = reference_decode(WithLooping(model, looping), tokenizer, PROMPTS, TokenGate(), HiddenLatent(), 10)
    for row, trace in enumerate(traces):
        assert trace.token_id == [int(ref_logits[t][row].argmax()) for t in range(trace.n_steps)]
    # latent feedback (the final hidden state), mixed with token steps; no row ends early (finished rows
    # leave the batch, and the views are compared row for row)
    gate = Recording(EntropyGate(threshold=0.0, max_consecutive=2))
    traces = engine.generate(PROMPTS, gate, HiddenLatent(), dataclasses.replace(decode, ignore_eos=True))
    ref_logits, _ = reference_decode(
        WithLooping(model, looping),
        tokenizer,
        PROMPTS,
        EntropyGate(threshold=0.0, max_consecutive=2),
        HiddenLatent(),
        10,
    )
    for t, view in enumerate(gate.views):
        torch.testing.assert_close(view.logits, ref_logits[t], atol=1e-6, rtol=1e-6)
    most = looping.loops if looping and looping.loops else model.config.loops
    for trace in traces:
        assert len(trace.extra["loops"]) == trace.n_steps
        assert all(1 <= n <= most for n in trace.extra["loops"])
        if looping is None or not looping.adaptive:
            assert set(trace.extra["loops"]) == {most}
    if looping is not None and looping.adaptive:
        assert len({n for trace in traces for n in trace.extra["loops"]}) > 1  # exits differ per row/step


def test_exit_decisions_on_constructed_distributions():
    def dist(*probs):
        return torch.tensor(probs, dtype=torch.float64).log()

    same = dist(0.7, 0.1, 0.1, 0.1)
    # per row (B=4, T=1), logits after iterations 1..5
    rows = [
        [same, same, same, same, same],  # converged at once
        [dist(0.7, 0.1, 0.1, 0.1), dist(0.1, 0.7, 0.1, 0.1)] * 2 + [same],  # argmax flips every time
        [dist(0.4, 0.3, 0.2, 0.1), dist(0.6, 0.2, 0.1, 0.1), same, same, same],  # converges at iteration 3
        [dist(0.7, 0.1, 0.1, 0.1), dist(0.1, 0.1, 0.1, 0.7)] * 2 + [same],  # same entropy, different token
    ]
    per_iteration = [torch.stack([r[i] for r in rows])[:, None] for i in range(5)]  # each (4, 1, V)
    used = lambda cfg: loops_used(cfg, per_iteration)[:, 0].tolist()  # noqa: E731
    assert used(LoopConfig(exit="kl")) == [2, 5, 4, 5]
    assert used(LoopConfig(exit="kl", epsilon=10.0)) == [2, 2, 2, 2]  # everything is close enough
    assert used(LoopConfig(exit="entropy", epsilon=1e-6)) == [2, 2, 4, 2]  # a permutation keeps H
    assert used(LoopConfig(exit="argmax")) == [2, 5, 2, 5]  # row 2 keeps token 0
    assert used(LoopConfig(exit="argmax", patience=2)) == [3, 5, 3, 5]
    assert used(LoopConfig(exit="kl", min_loops=3)) == [3, 5, 4, 5]
    assert parse_exit("kl:5e-4") == LoopConfig(exit="kl", epsilon=5e-4)
    assert parse_exit("argmax:3", loops=8) == LoopConfig(loops=8, exit="argmax", patience=3)
    assert parse_exit("entropy:epsilon=0.01,min_loops=2") == LoopConfig(exit="entropy", epsilon=0.01, min_loops=2)
    for bad in ("nope", "kl:x", "kl:eps=1", "argmax:0", "kl:-1"):
        with pytest.raises(InputError):
            parse_exit(bad)
    with pytest.raises(InputError):
        LoopConfig(loops=2, exit="kl", min_loops=3)


def test_loop_settings_appear_in_the_setting_only_when_used():
    gate, latent = GateConfig("token"), LatentConfig()
    plain = DecodeConfig()
    assert "loop" not in setting_of(gate, latent, plain) and setting_id(gate, latent, plain) == "token"
    adaptive = DecodeConfig(loop=parse_exit("kl:5e-4", loops=8))
    assert setting_of(gate, latent, adaptive)["loop"] == {
        "loops": 8,
        "exit": "kl",
        "epsilon": 5e-4,
        "patience": 1,
        "min_loops": 1,
    }
    assert setting_id(gate, latent, adaptive) == "token-loops8-kl0.0005"
    assert setting_id(gate, latent, DecodeConfig(loop=LoopConfig(loops=3))) == "token-loops3"


def test_arch_specs_and_training_loop_draws():
    assert parse_arch_spec("looped:k=2,L=4,prelude=1,coda=1,inject=add,random=1,cos=0.1") == dict(
        block_layers=2, loops=4, prelude=1, coda=1, inject="add", train_loops="uniform", cosine_weight=0.1
    )
    assert parse_arch_spec("looped:pos=learned") == dict(positions="learned")
    for bad in ("looped:k=0", "looped:q=1", "looped:inject=mul", "looped:L=x", "looped:pos=alibi"):
        with pytest.raises(InputError):
            parse_arch_spec(bad)
    config = LoopedConfig(loops=4, train_loops="uniform")
    draws = [training_loops(config, seed=0, step=s) for s in range(200)]
    assert set(draws) == set(range(1, 8)) and draws == [training_loops(config, 0, s) for s in range(200)]
    assert training_loops(LoopedConfig(loops=4), seed=0, step=3) == 4


def test_cosine_regulariser_only_in_training(tokenizer):
    model = looped(tokenizer, "looped:k=1,L=3,cos=0.5")
    enc = batch(tokenizer)
    model.train()
    out = model.model(**enc)
    assert out.regularizer is not None and out.regularizer.requires_grad and 0 < out.regularizer.detach().item() <= 1.0
    model.eval()
    assert model.model(**enc).regularizer is None


def test_cli_records_loops_per_step_and_refuses_them_on_plain_models(tmp_path, tokenizer, saved_model, capsys):
    model_dir = tmp_path / "looped"
    looped(tokenizer, "looped:k=1,L=4,inject=add").save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / "run"
    assert (
        cli(
            "run",
            "--model",
            model_dir,
            "--task",
            "addition:n=2,digits=1",
            "--limit",
            "3",
            "--exit",
            "kl:5e-4",
            "--max-new-tokens",
            "6",
            "--out",
            out,
        )
        == 0
    )
    rows = records(out)
    assert len(rows) == 3
    for row in rows:
        assert len(row["steps"]["loops"]) == row["n_steps"] and all(1 <= n <= 4 for n in row["steps"]["loops"])
        assert row["setting"]["loop"]["exit"] == "kl" and row["setting_id"].endswith("loops-kl0.0005")
    assert cli("analyze", out) == 0  # the report tabulates and plots the loops each step used
    table = pd.read_csv(out / "report" / "loops_per_token.csv")
    assert table["tokens"].sum() == sum(r["n_steps"] for r in rows)
    assert (out / "report" / "loops_per_token.png").is_file()
    assert "Loops per token" in (out / "report" / "summary.md").read_text()
    assert 'id="fig-loops_per_token"' in (out / "report" / "report.html").read_text()
    plain_out = tmp_path / "plain"
    assert (
        cli(
            "run",
            "--model",
            model_dir,
            "--task",
            "addition:n=2,digits=1",
            "--limit",
            "2",
            "--max-new-tokens",
            "4",
            "--out",
            plain_out,
        )
        == 0
    )
    assert all(r["steps"]["loops"] == [4] * r["n_steps"] for r in records(plain_out))  # recorded without --loops too
    capsys.readouterr()
    refused = tmp_path / "refused"
    assert cli("run", "--model", saved_model, "--task", "addition", "--loops", "2", "--out", refused) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "looped model" in err and not refused.exists()


def test_a_report_reads_a_looped_models_tokenizer_without_config_warnings(tmp_path, tokenizer):
    """analysis loads the run's tokenizer for its traces in a process that never imported the zoo."""
    import subprocess
    import sys

    looped(tokenizer, "looped:k=1,L=2").save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    code = (
        "from latentcot.analysis.report import token_decoder; "
        f"decode = token_decoder({{'model': {{'source': {str(tmp_path)!r}}}}}); print(decode(5))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == tokenizer.decode([5])
    assert "model of type" not in done.stderr


def test_train_a_looped_arch_through_the_cli(tmp_path, capsys):
    out, spec = tmp_path / "model", "looped:k=1,L=2,prelude=1,random=1,cos=0.1"
    assert (
        cli(
            "train",
            "--task",
            "addition:n=2,digits=1,reverse=1",
            "--method",
            "nocot",
            "--arch",
            spec,
            "--out",
            out,
            "--steps",
            "6",
            "--eval-every",
            "6",
            "--hidden",
            "32",
            "--heads",
            "2",
            "--batch-size",
            "8",
            "--eval-examples",
            "8",
            "--test-examples",
            "8",
        )
        == 0
    )
    card = json.loads((out / "card.json").read_text())
    assert card["arch"] == "looped" and card["config"]["arch"] == spec
    model = AutoModelForCausalLM.from_pretrained(out)
    assert (model.config.loops, model.config.prelude, model.config.train_loops) == (2, 1, "uniform")
    assert model.config.cosine_weight == 0.1
    capsys.readouterr()
    assert (
        cli("train", "--task", "addition", "--method", "nocot", "--arch", "looped:k=0", "--out", tmp_path / "bad") == 2
    )
    assert "block_layers" in capsys.readouterr().err


def test_loops_per_token_tables_by_domain():
    from latentcot.analysis import steps_frame
    from latentcot.analysis.loops import loops_figure, loops_per_token, loops_summary

    def record(domain, example, loops):
        return {
            "task_spec": "t",
            "setting_id": "token-loops-kl0.0005",
            "example_id": example,
            "domain": domain,
            "n_steps": len(loops),
            "steps": {"mode": ["token"] * len(loops), "loops": loops},
        }

    steps = steps_frame(
        [record("arithmetic", "a", [2, 2, 8]), record("arithmetic", "b", [8]), record("logic", "c", [3, 3, 3, 8])]
    )
    table = loops_per_token(steps)
    arithmetic = table[table["domain"] == "arithmetic"].set_index("loops")
    assert arithmetic["tokens"].to_dict() == {2: 2, 8: 2} and arithmetic["fraction"].to_dict() == {2: 0.5, 8: 0.5}
    summary = loops_summary(steps).set_index("domain")
    assert summary.loc["logic", "mean"] == 4.25 and summary.loc["logic", "max"] == 8
    assert len(loops_figure(table).axes) == 1
    plain = steps_frame(
        [
            {
                "task_spec": "t",
                "setting_id": "token",
                "example_id": "x",
                "domain": "d",
                "n_steps": 1,
                "steps": {"mode": ["token"]},
            }
        ]
    )
    assert loops_per_token(plain).empty and loops_summary(plain).empty


def test_engine_token_mode_reproduces_hf_generate_on_a_looped_model(tokenizer):
    model = looped(tokenizer, "looped:k=2,L=3,prelude=1,inject=add")
    enc = batch(tokenizer)
    hf = model.generate(**enc, max_new_tokens=12, do_sample=False)[:, enc["input_ids"].shape[1] :]
    traces = Engine(model, tokenizer).generate(PROMPTS, TokenGate(), HiddenLatent(), DecodeConfig(max_new_tokens=12))
    for trace, ref in zip(traces, hf.tolist()):
        assert trace.token_id == ref[: trace.n_steps] and trace.extra["loops"] == [3] * trace.n_steps
