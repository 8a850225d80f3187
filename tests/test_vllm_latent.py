"""The in-engine latent arm (``latentcot.backends.vllm_latent``), checked on CPU.

Model Runner V2 needs Triton, which has no CPU backend, so the runner itself cannot run here. What is
checked: the overlay and the latents it feeds (pure tensor code); the whole per-step protocol (gate
processor -> latent write -> overlay on the next input) driven step by step around the real model,
against the hf engine; and, on a real vLLM engine, that the plugin registers a twin architecture that
vLLM resolves, loads and decodes with, whose model state builds on the loaded model and overlays
latents onto vLLM's own InputBatch.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

if importlib.util.find_spec("vllm") is None and not os.environ.get("LATENTCOT_REQUIRE_VLLM"):
    pytest.skip("vLLM is not installed (LATENTCOT_REQUIRE_VLLM unset)", allow_module_level=True)

from latentcot.backends.vllm_latent import (  # noqa: E402
    IN_ENGINE_LATENTS,
    latent_from_spec,
    latent_spec,
    overlay_latents,
    write_latents,
)
from latentcot.config import DecodeConfig, LatentConfig  # noqa: E402
from latentcot.engine import Engine  # noqa: E402
from latentcot.errors import InputError  # noqa: E402
from latentcot.gates import EntropyGate, TokenGate  # noqa: E402
from latentcot.latent import HiddenLatent, NoiseLatent, SoftLatent, TopKSoftLatent, make_latent  # noqa: E402
from latentcot.types import LATENT, TOKEN, EmbeddingTable, StepView  # noqa: E402
from test_vllm_backend import assert_same_traces, vllm_environment  # noqa: E402

PROMPTS = ["12+7=", "Every cat is a mammal.", "x", "The quick brown fox"]


def test_overlay_feeds_each_pending_latent_once_and_only_on_its_placeholder():
    placeholder, dim = 9, 3
    input_ids = torch.tensor([4, 9, 9, 1, 9, 2])  # three requests: rows 0-1, 2-4 (a prefill chunk), 5
    embeds = torch.arange(6 * dim, dtype=torch.float32).view(6, dim)
    before = embeds.clone()
    last_rows = torch.tensor([1, 4, 5])
    slots = torch.tensor([2, 0, 1])
    latents = -torch.arange(4 * dim, dtype=torch.float32).view(4, dim) - 1
    pending = torch.tensor([True, False, True, True])  # slot 1's last token is no placeholder; slot 3 not here

    took = overlay_latents(embeds, input_ids, last_rows, slots, pending, latents, placeholder)

    assert took.tolist() == [True, True, False]
    torch.testing.assert_close(embeds[1], latents[2])  # request in slot 2 gets its own latent
    torch.testing.assert_close(embeds[4], latents[0])
    untouched = [0, 2, 3, 5]  # a placeholder inside a chunk (row 2) is not a latent step
    torch.testing.assert_close(embeds[untouched], before[untouched])
    assert pending.tolist() == [False, False, False, True]  # fed once; other slots keep theirs
    again = overlay_latents(embeds.clone(), input_ids, last_rows, slots, pending, latents, placeholder)
    assert not again.any()


def _view(logits: torch.Tensor, hidden: torch.Tensor) -> StepView:
    rows = logits.shape[0]
    return StepView(
        step=0,
        logits=logits,
        entropy=torch.zeros(rows),
        hidden=hidden,
        n_latent=torch.zeros(rows, dtype=torch.long),
        latent_run=torch.zeros(rows, dtype=torch.long),
        active=torch.ones(rows, dtype=torch.bool),
    )


@pytest.mark.parametrize(
    "config",
    [
        LatentConfig("soft", temperature=0.7),
        LatentConfig("topk-soft", top_k=3, min_p=0.1),
        LatentConfig("hidden"),
        LatentConfig("hidden-normed"),
        LatentConfig("zero"),
        LatentConfig("mean-embedding"),
    ],
    ids=lambda c: c.kind,
)
def test_latent_specs_travel_to_the_worker_unchanged(config):
    gen = torch.Generator().manual_seed(0)
    table = EmbeddingTable.from_module(torch.nn.Embedding(11, 5))
    view = _view(torch.randn(4, 11, generator=gen), torch.randn(4, 5, generator=gen))
    mode = make_latent(config)
    spec = latent_spec(mode)
    assert spec["kind"] in IN_ENGINE_LATENTS
    torch.testing.assert_close(latent_from_spec(spec)(view, table), mode(view, table))


def test_latents_the_engine_cannot_build_are_refused():
    with pytest.raises(ValueError, match="NoiseLatent does not run inside vLLM"):
        latent_spec(NoiseLatent())


def test_written_latents_are_the_hf_engines_modes_on_the_fired_rows():
    gen = torch.Generator().manual_seed(1)
    table = EmbeddingTable.from_module(torch.nn.Embedding(13, 6))
    hidden = torch.randn(5, 6, generator=gen)  # by logits row
    logits = torch.randn(3, 13, generator=gen)  # the three fired rows' logits
    latents, pending = torch.zeros(8, 6), torch.zeros(8, dtype=torch.bool)
    soft, hid = {"kind": "soft", "temperature": 1.0}, {"kind": "hidden"}
    rules = [{"latent": soft}, {"latent": hid}, {"latent": soft}]
    write_latents(latents, pending, table, hidden, [0, 3, 4], [6, 2, 1], logits, rules)

    expected_soft = SoftLatent()(_view(logits[[0, 2]], hidden[[0, 4]]), table)
    torch.testing.assert_close(latents[[6, 1]], expected_soft)
    torch.testing.assert_close(latents[2], hidden[3])  # the hidden state of its own logits row
    assert pending.nonzero().flatten().tolist() == [1, 2, 6]


# --- the per-step protocol around the real model --------------------------------------------------


class _Arm:
    """The parts of LatentModelState the gate processor and the overlay use, on plain tensors."""

    def __init__(self, table: EmbeddingTable, slots: int):
        dim = table.weight.shape[1]
        self.table = table
        self.latents = torch.zeros(slots, dim, dtype=table.weight.dtype)
        self.pending = torch.zeros(slots, dtype=torch.bool)
        self.hidden = torch.zeros(slots, dim, dtype=table.weight.dtype)

    def write_latents(self, rows, slots, logits, rules):
        write_latents(self.latents, self.pending, self.table, self.hidden, rows, slots, logits, rules)


def _in_engine_decode(model, tokenizer, prompts, threshold, latent, steps, placeholder):
    """Decode the way Model Runner V2 runs the latent arm: each step the gate processor sees the batch's
    logits (rows reordered to request slots), fires, and writes latents; the sampled tokens (the
    placeholder where it fired) are embedded and the pending latents overlaid, then fed. Each row keeps
    its own KV cache, as the paged cache does."""
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext

    from latentcot.backends.vllm import RULE_KEY, GateProcessorV2
    from vllm import SamplingParams

    slots = [3, 0, 5, 1][: len(prompts)]  # logits row -> request slot
    prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
    prompt_len = np.zeros(8, dtype=np.int64)
    for slot, ids in zip(slots, prompt_ids):
        prompt_len[slot] = len(ids)
    gate = GateProcessorV2(None, type("ReqStates", (), {"prompt_len": type("Host", (), {"np": prompt_len})})())
    table = EmbeddingTable.from_module(model.get_input_embeddings())
    arm = _Arm(table, 8)
    gate.latent_arm = arm
    rule = {"threshold": threshold, "unit": "nats", "max_consecutive": None, "max_latent": None}
    for row, slot in enumerate(slots):
        extra = {**rule, "key": f"r{row}", "n_latent": 0, "latent_run": 0, "sentinel": placeholder}
        extra.update(in_engine=True, latent=latent_spec(latent))
        gate.add_request(slot, SamplingParams(extra_args={RULE_KEY: extra}))

    caches, outputs = [None] * len(prompts), [[] for _ in prompts]
    inputs = [table.rows(torch.tensor(ids)) for ids in prompt_ids]  # prefill: (T, D) each
    for step in range(steps):
        logits, hidden = [], []
        with torch.no_grad():
            for row, embeds in enumerate(inputs):
                out = model(
                    inputs_embeds=embeds[None], past_key_values=caches[row], use_cache=True, output_hidden_states=True
                )
                caches[row] = out.past_key_values
                logits.append(out.logits[0, -1])
                hidden.append(out.hidden_states[-1][0, -1])
        arm.hidden[: len(prompts)] = torch.stack(hidden)  # compute_logits' capture, by logits row
        seen = np.array([len(prompt_ids[row]) + step for row in range(len(prompts))])
        ctx = LogitsContext(
            expanded_idx_mapping=torch.tensor(slots),
            idx_mapping=torch.tensor(slots),
            idx_mapping_np=np.array(slots),
            expanded_local_pos=torch.zeros(len(slots), dtype=torch.long),
            input_ids=torch.zeros(len(slots), dtype=torch.long),
            pos=torch.tensor(seen - 1),
            seq_lens_upper_bound_np=seen,
        )
        sampled = gate.apply(torch.stack(logits).float(), ctx).argmax(-1)  # greedy, (R,)
        for row, token in enumerate(sampled.tolist()):
            outputs[row].append(token)
        embeds = table.rows(sampled)  # (R, D): the next step's inputs, one token per request
        rows = torch.arange(len(prompts))
        overlay_latents(embeds, sampled, rows, torch.tensor(slots), arm.pending, arm.latents, placeholder)
        inputs = [embeds[row][None] for row in range(len(prompts))]
    return outputs, gate.take([f"r{row}" for row in range(len(prompts))])


@pytest.mark.parametrize("latent", [SoftLatent(0.7), TopKSoftLatent(4), HiddenLatent()], ids=["soft", "topk", "hidden"])
def test_the_in_engine_protocol_decodes_as_the_hf_engine(models64, tokenizer, latent):
    model, steps = models64["llama"], 10
    cfg = DecodeConfig(max_new_tokens=steps, ignore_eos=True)
    probe = Engine(model, tokenizer).generate(PROMPTS, TokenGate(), latent, cfg)
    threshold = float(torch.tensor([h for t in probe for h in t.entropy]).median())
    reference = Engine(model, tokenizer).generate(PROMPTS, EntropyGate(threshold), latent, cfg)
    placeholder = tokenizer.pad_token_id

    outputs, records = _in_engine_decode(model, tokenizer, PROMPTS, threshold, latent, steps, placeholder)

    modes = [m for t in reference for m in t.mode]
    assert LATENT in modes and TOKEN in modes  # both arms are exercised
    for row, ref in enumerate(reference):
        recs = [records[f"r{row}"][s] for s in range(steps)]
        assert [LATENT if r.fired else TOKEN for r in recs] == ref.mode
        assert [r.argmax if r.fired else tok for r, tok in zip(recs, outputs[row])] == ref.token_id
        assert [tok for r, tok in zip(recs, outputs[row]) if r.fired] == [placeholder] * ref.mode.count(LATENT)
        torch.testing.assert_close(
            torch.tensor([r.entropy for r in recs]), torch.tensor(ref.entropy), atol=1e-6, rtol=0
        )


def test_a_token_step_never_samples_the_placeholder():
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext

    from latentcot.backends.vllm import RULE_KEY, GateProcessorV2
    from vllm import SamplingParams

    gate = GateProcessorV2(None, type("ReqStates", (), {"prompt_len": type("Host", (), {"np": np.zeros(2)})})())
    rule = {"threshold": 100.0, "unit": "nats", "max_consecutive": None, "max_latent": None, "key": "k"}
    gate.add_request(0, SamplingParams(extra_args={RULE_KEY: {**rule, "n_latent": 0, "latent_run": 0, "sentinel": 2}}))
    logits = torch.tensor([[0.0, 1.0, 9.0, 0.5]])  # the placeholder is the argmax
    ctx = LogitsContext(
        expanded_idx_mapping=torch.tensor([0]),
        idx_mapping=torch.tensor([0]),
        idx_mapping_np=np.array([0]),
        expanded_local_pos=torch.zeros(1, dtype=torch.long),
        input_ids=torch.zeros(1, dtype=torch.long),
        pos=torch.tensor([0]),
        seq_lens_upper_bound_np=np.array([0]),
    )
    gate.slots[0]["in_engine"] = True
    out = gate.apply(logits.clone(), ctx)
    assert out[0, 2] == -torch.inf and out[0].argmax() == 1
    assert gate.take(["k"])["k"][0].argmax == 2  # the record keeps the model's own argmax


# --- on a real vLLM engine (its V1 runner: the CPU has no Triton for V2) ----------------------------


@pytest.fixture(scope="module")
def twin_llm(saved_model, tmp_path_factory):
    """vLLM with the plugin's twin of the tiny llama, as the backend asks for it on Model Runner V2."""
    from latentcot.backends.vllm import GateProcessor
    from vllm import LLM

    with pytest.MonkeyPatch.context() as patch:
        for name, value in vllm_environment(tmp_path_factory.mktemp("vllm-twin")).items():
            patch.setenv(name, value)
        yield LLM(
            model=str(saved_model),
            hf_overrides={"architectures": ["LatentcotLlamaForCausalLM"]},
            dtype="float32",
            max_model_len=256,
            kv_cache_memory_bytes=2**28,
            enforce_eager=True,
            seed=0,
            async_scheduling=False,
            logits_processors=[GateProcessor],
            worker_extension_cls="latentcot.backends.vllm.RecordsExtension",
        )


@pytest.mark.slow
def test_the_plugin_registers_a_twin_that_vllm_loads_and_decodes_with(twin_llm, models, tokenizer):
    from vllm.model_executor.models.llama import LlamaForCausalLM
    from vllm.v1.worker.gpu.model_states import resolve_model_state_cls
    from vllm.v1.worker.gpu.model_states.default import DefaultModelState

    from latentcot.backends.vllm import VLLMEngine
    from latentcot.backends.vllm_latent import LatentModelState

    twin = twin_llm.apply_model(lambda model: type(model))[0]
    assert twin.__name__ == "LatentcotLlamaForCausalLM" and issubclass(twin, LlamaForCausalLM)
    state = resolve_model_state_cls(twin_llm.llm_engine.vllm_config, twin)  # vLLM's own choice of state
    assert issubclass(state, LatentModelState) and issubclass(state, DefaultModelState)

    # the backend's in-engine driver, token gate: one request per row, the same records as the hf engine
    engine = VLLMEngine(twin_llm, tokenizer, {"latent_steps": "in-engine"})
    cfg = DecodeConfig(max_new_tokens=16)
    reference = Engine(models["llama"], tokenizer).generate(PROMPTS, TokenGate(), SoftLatent(), cfg)
    assert engine.placeholder in {t for r in reference for t in r.token_id}  # this random model samples its pad
    ours = engine.generate(PROMPTS, TokenGate(), SoftLatent(), cfg)  # a gate that never fires reserves nothing
    assert_same_traces(ours, reference)
    with pytest.raises(InputError, match="NoiseLatent does not run inside vLLM"):
        engine.generate(PROMPTS, EntropyGate(1.0), NoiseLatent(), cfg)


@pytest.mark.slow
def test_the_model_state_builds_on_the_loaded_model_and_overlays_vllms_batch(twin_llm, models):
    from vllm.config import set_current_vllm_config
    from vllm.v1.worker.gpu.input_batch import InputBatch, InputBuffers

    from latentcot.backends.vllm_latent import _latent_state_class

    config = twin_llm.llm_engine.vllm_config

    def check(model):
        with set_current_vllm_config(config):
            state = _latent_state_class()(config, model, None, torch.device("cpu"))
        assert model.latentcot_state is state  # compute_logits now keeps hidden states for it
        batch = InputBatch.make_dummy(3, 7, InputBuffers(state.max_num_reqs, state.max_num_tokens, torch.device("cpu")))
        placeholder = 1
        batch.input_ids[:7] = torch.tensor([5, 6, 7, 8, placeholder, 9, placeholder])  # rows end at 1, 3, 6
        batch.idx_mapping[:3] = torch.tensor([4, 0, 2])
        state.placeholder = placeholder
        state.latents[2] = 7.0
        state.pending[[2, 4]] = True  # slot 4's last token (row 1) is no placeholder: nothing to feed
        embeds = state.prepare_inputs(batch, None)["inputs_embeds"]
        plain = model.embed_input_ids(batch.input_ids[:7])
        assert embeds.data_ptr() == state.embeds.data_ptr()  # the persistent buffer, as CUDA graphs need
        torch.testing.assert_close(embeds[:6], plain[:6])  # the mid-batch placeholder (row 4) stays a token
        assert (embeds[6] == 7.0).all()
        assert state.pending.nonzero().flatten().tolist() == [4]
        return state.table.weight

    table = twin_llm.apply_model(check)[0]
    torch.testing.assert_close(table, models["llama"].get_input_embeddings().weight.detach())


@pytest.mark.slow
def test_fitting_groups_keep_the_kv_cache_from_preempting(twin_llm, tokenizer):
    from latentcot.backends.vllm import VLLMEngine, _Row

    engine = VLLMEngine(twin_llm, tokenizer, {"latent_steps": "in-engine"})
    cache = twin_llm.llm_engine.vllm_config.cache_config
    per_row = 2 * cache.block_size - 10  # with 10 new tokens: exactly two blocks a row
    rows = [_Row([1] * per_row, 0, torch.zeros(0, 4)) for _ in range(cache.num_gpu_blocks)]
    groups = engine._fitting_groups(rows, 10)
    assert [len(g) for g in groups] == [cache.num_gpu_blocks // 2, cache.num_gpu_blocks // 2]


def test_the_backend_names_the_latent_modes_of_each_runner(monkeypatch):
    from latentcot.backends import expects_runner_v2, vllm_latent_modes

    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    assert expects_runner_v2() and set(vllm_latent_modes()) == set(IN_ENGINE_LATENTS)
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "0")
    assert vllm_latent_modes() == ("soft", "topk-soft")


def test_the_plugin_covers_every_causal_architecture_vllm_knows():
    from latentcot.backends.vllm_latent import latent_architecture, register
    from vllm import ModelRegistry

    register()
    archs = ModelRegistry.get_supported_archs()
    for name in ("LlamaForCausalLM", "Qwen2ForCausalLM", "GPT2LMHeadModel", "Gemma3ForCausalLM"):
        assert latent_architecture([name]) in archs
    with pytest.raises(ValueError, match="causal-LM architecture, not BertModel"):
        latent_architecture(["BertModel"])
