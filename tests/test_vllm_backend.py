"""The vLLM backend against the hf engine on the same tiny model: same tokens, modes and statistics.

Skipped when vLLM is not installed, unless LATENTCOT_REQUIRE_VLLM is set (``make test`` sets it), in
which case a missing or broken install fails the suite.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

if importlib.util.find_spec("vllm") is None and not os.environ.get("LATENTCOT_REQUIRE_VLLM"):
    pytest.skip("vLLM is not installed (LATENTCOT_REQUIRE_VLLM unset)", allow_module_level=True)

from latentcot.config import BackendConfig, DecodeConfig, ModelConfig  # noqa: E402
from latentcot.engine import Engine  # noqa: E402
from latentcot.errors import InputError  # noqa: E402
from latentcot.gates import EntropyGate, FixedGate, LatentGate, TokenGate  # noqa: E402
from latentcot.latent import HiddenLatent, SoftLatent, TopKSoftLatent  # noqa: E402

PROMPTS = ["12+7=", "Every cat is a mammal. Is Tom a cat?", "x", "The quick brown fox"]


def vllm_environment(root) -> dict[str, str]:
    """A small, fast, in-process vLLM whose caches live under ``root``."""
    return {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CACHE_ROOT": str(root / "vllm-cache"),
        "TORCHINDUCTOR_CACHE_DIR": str(root / "inductor-cache"),
        "HF_HUB_OFFLINE": "1",
    }


@pytest.fixture(scope="module")
def vllm_engine(saved_model, tmp_path_factory, models, tokenizer):
    from latentcot.backends.vllm import VLLMEngine

    with pytest.MonkeyPatch.context() as patch:
        for name, value in vllm_environment(tmp_path_factory.mktemp("vllm")).items():
            patch.setenv(name, value)
        backend = BackendConfig("vllm", max_model_len=256, kv_cache_gib=0.25, enforce_eager=True)
        engine = VLLMEngine.load(ModelConfig(str(saved_model), dtype="float32"), backend)
        if engine.in_engine:  # Model Runner V2 (GPUs): token steps never sample the placeholder; this random
            # model samples its pad token, so comparisons with the hf engine use a token it never chose here
            reference = Engine(models["llama"], tokenizer).generate(
                PROMPTS, TokenGate(), HiddenLatent(), DecodeConfig(max_new_tokens=64)
            )
            engine.placeholder = max(set(range(len(tokenizer))) - {t for r in reference for t in r.token_id})
        yield engine


@pytest.fixture(scope="module")
def hf_engine(models, tokenizer):
    return Engine(models["llama"], tokenizer)


def assert_same_traces(ours, reference, atol=1e-4):
    for got, ref in zip(ours, reference, strict=True):
        assert got.mode == ref.mode
        assert got.token_id == ref.token_id
        assert got.finish_reason == ref.finish_reason
        assert got.completion == ref.completion
        for name in ("entropy", "p_token", "p_max"):
            torch.testing.assert_close(
                torch.tensor(getattr(got, name)), torch.tensor(getattr(ref, name)), atol=atol, rtol=0, msg=name
            )


def test_greedy_token_arm_matches_the_hf_engine(vllm_engine, hf_engine):
    cfg = DecodeConfig(max_new_tokens=24)
    ours = vllm_engine.generate(PROMPTS, TokenGate(), HiddenLatent(), cfg)
    reference = hf_engine.generate(PROMPTS, TokenGate(), HiddenLatent(), cfg)
    assert_same_traces(ours, reference)
    assert {t.finish_reason for t in reference} == {"eos", "length"}  # both endings are exercised


@pytest.fixture(scope="module")
def median_entropy(hf_engine):
    traces = hf_engine.generate(PROMPTS, TokenGate(), HiddenLatent(), DecodeConfig(max_new_tokens=16))
    return float(torch.tensor([h for t in traces for h in t.entropy]).median())


@pytest.mark.parametrize("latent", [SoftLatent(0.7), TopKSoftLatent(4)], ids=["soft", "topk-soft"])
def test_entropy_gated_hybrid_matches_the_hf_engine(vllm_engine, hf_engine, median_entropy, latent):
    gate, cfg = EntropyGate(median_entropy), DecodeConfig(max_new_tokens=16)
    ours = vllm_engine.generate(PROMPTS, gate, latent, cfg)
    reference = hf_engine.generate(PROMPTS, gate, latent, cfg)
    # Feeding latents back is chaotic in a random model: fp32 rounding differences between the two
    # engines' kernels grow with each latent step, so later entropies agree less tightly (tokens and
    # modes stay exact).
    assert_same_traces(ours, reference, atol=1e-2)
    for got, ref in zip(ours, reference):
        assert got.entropy[0] == pytest.approx(ref.entropy[0], abs=1e-4)
    modes = {m for t in reference for m in t.mode}
    assert modes == {"token", "latent"}
    # some row switches back and forth, so continuing from prompt embeddings is exercised
    assert any("token" in t.mode[t.mode.index("latent") :] for t in reference if "latent" in t.mode)


def test_caps_stop_strings_and_fixed_gate_match(vllm_engine, hf_engine, median_entropy):
    free = hf_engine.generate(PROMPTS[:1], TokenGate(), HiddenLatent(), DecodeConfig(max_new_tokens=20))[0]
    stop = free.completion[5:7]
    cases = [
        (EntropyGate(0.0, max_consecutive=2), DecodeConfig(max_new_tokens=9)),
        (EntropyGate(0.0, max_latent=3), DecodeConfig(max_new_tokens=9)),
        (
            EntropyGate(median_entropy, unit="normalized" if median_entropy < 1 else "nats"),
            DecodeConfig(max_new_tokens=20, stop=(stop,)),
        ),
        (TokenGate(), DecodeConfig(max_new_tokens=20, stop=(stop,))),
        (FixedGate(3), DecodeConfig(max_new_tokens=8)),
        (LatentGate(), DecodeConfig(max_new_tokens=4)),
    ]
    for gate, cfg in cases:
        ours = vllm_engine.generate(PROMPTS, gate, SoftLatent(), cfg)
        reference = hf_engine.generate(PROMPTS, gate, SoftLatent(), cfg)
        assert_same_traces(ours, reference, atol=1e-2)
    stopped = vllm_engine.generate(PROMPTS[:1], TokenGate(), HiddenLatent(), DecodeConfig(20, stop=(stop,)))[0]
    assert stopped.finish_reason == "stop" and stop in stopped.completion


def test_sampling_is_seeded(vllm_engine, median_entropy):
    cfg = DecodeConfig(max_new_tokens=12, temperature=1.0, top_p=0.95)
    gate = EntropyGate(median_entropy)
    first = vllm_engine.generate(PROMPTS, gate, SoftLatent(), cfg, seed=5)
    again = vllm_engine.generate(PROMPTS, gate, SoftLatent(), cfg, seed=5)
    other = vllm_engine.generate(PROMPTS, gate, SoftLatent(), cfg, seed=6)
    assert [t.token_id for t in first] == [t.token_id for t in again]
    assert [t.token_id for t in first] != [t.token_id for t in other]


def test_unsupported_requests_are_input_errors(vllm_engine):
    from latentcot.latent import NoiseLatent

    cfg = DecodeConfig(max_new_tokens=4)
    if vllm_engine.identity["latent_steps"] == "re-prefill":  # V1: the driver mixes soft latents only
        with pytest.raises(InputError, match="soft and topk-soft"):
            vllm_engine.generate(PROMPTS, EntropyGate(1.0), HiddenLatent(), cfg)
    with pytest.raises(InputError, match="NoiseLatent|soft and topk-soft"):  # no runner builds noise latents
        vllm_engine.generate(PROMPTS, EntropyGate(1.0), NoiseLatent(), cfg)
    with pytest.raises(InputError, match="--measure counterfactual"):
        vllm_engine.generate(PROMPTS, TokenGate(), HiddenLatent(), cfg, measure=("counterfactual",))
    with pytest.raises(InputError, match="exceeds the vLLM context of 256"):
        vllm_engine.generate(["x" * 250], TokenGate(), HiddenLatent(), DecodeConfig(max_new_tokens=10))


def run_records(saved_model, dataset, out, *extra) -> list[dict]:
    import json

    from latentcot.cli import main

    args = [
        "run",
        "--model",
        saved_model,
        "--task",
        dataset,
        "--max-new-tokens",
        "12",
        "--batch-size",
        "2",
        "--out",
        out,
        *extra,
    ]
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    assert exit_.value.code == 0
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def assert_same_records(ours: list[dict], reference: list[dict], atol: float) -> None:
    assert len(ours) == len(reference)
    for got, ref in zip(ours, reference):
        floats = ("entropy", "p_token", "p_max")
        assert {k: v for k, v in got.items() if k != "steps"} == {k: v for k, v in ref.items() if k != "steps"}
        assert {k: v for k, v in got["steps"].items() if k not in floats} == {
            k: v for k, v in ref["steps"].items() if k not in floats
        }
        for name in floats:
            assert got["steps"][name] == pytest.approx(ref["steps"][name], abs=atol)


@pytest.mark.slow
def test_cli_run_on_vllm_writes_the_hf_records(saved_model, dataset, tmp_path, vllm_engine):
    import json

    vllm_options = ["--backend", "vllm", "--max-model-len", "256", "--kv-cache-gib", "0.25", "--enforce-eager"]
    with pytest.MonkeyPatch.context() as patch:
        for name, value in vllm_environment(tmp_path).items():
            patch.setenv(name, value)
        for name, extra, atol in [
            ("token", [], 1e-4),
            ("hybrid", ["--gate", "entropy", "--threshold", "3.5", "--latent", "soft"], 1e-2),
        ]:
            ours = run_records(saved_model, dataset, tmp_path / f"{name}-vllm", *extra, *vllm_options)
            reference = run_records(saved_model, dataset, tmp_path / f"{name}-hf", *extra)
            assert_same_records(ours, reference, atol)
            if name == "hybrid":
                assert {m for r in ours for m in r["steps"]["mode"]} == {"token", "latent"}
    manifest = json.loads((tmp_path / "hybrid-vllm" / "manifest.json").read_text())
    assert manifest["config"]["backend"] == {
        "name": "vllm",
        "tensor_parallel_size": 1,
        "max_model_len": 256,
        "gpu_memory_utilization": None,
        "kv_cache_gib": 0.25,
        "enforce_eager": True,
    }
    assert manifest["model"]["backend"] == "vllm" and manifest["model"]["vllm_version"]


# --- both model runners: the gate processors through vLLM's own loaders, on constructed logits -----------


def _rule(key, threshold, sentinel=7, **caps):
    return {"key": key, "threshold": threshold, "unit": "nats", "sentinel": sentinel, "latent_run": 0,
            "n_latent": 0, "max_consecutive": None, "max_latent": None, **caps}  # fmt: skip


def _constructed_logits(batch=4, vocab=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    scale = torch.tensor([0.3, 1.0, 3.0, 8.0])[:batch, None]  # flat to peaked rows: entropies spread
    return torch.randn(batch, vocab, generator=generator) * scale


def _hf_decisions(logits, threshold):
    """What the hf engine's entropy gate and statistics say about the same logits."""
    from latentcot.sampling import distribution_stats
    from latentcot.types import StepView

    probs, entropy = distribution_stats(logits)
    zeros = torch.zeros(len(logits), dtype=torch.long)
    view = StepView(0, logits, entropy, torch.zeros(len(logits), 4), zeros, zeros, zeros == 0)
    return entropy, probs.max(-1), EntropyGate(threshold)(view)


def test_both_gate_processors_load_through_vllms_own_loaders():
    from vllm.v1.sample.logits_processor import _load_logitsprocs_by_fqcns
    from vllm.v1.worker.gpu.sample.logits_processor.loader import _load_v2_logitsprocs_by_fqcns

    from latentcot.backends.vllm import GateProcessor, GateProcessorV2

    v1 = "latentcot.backends.vllm:GateProcessor"
    v2 = "latentcot.backends.vllm:GateProcessorV2"
    assert _load_logitsprocs_by_fqcns([GateProcessor, v1]) == [GateProcessor, GateProcessor]
    assert _load_v2_logitsprocs_by_fqcns([GateProcessorV2, v2]) == [GateProcessorV2, GateProcessorV2]
    with pytest.raises(ValueError, match="not a subclass"):  # each runner refuses the other's class
        _load_v2_logitsprocs_by_fqcns([GateProcessor])
    with pytest.raises(ValueError, match="not a subclass"):
        _load_logitsprocs_by_fqcns([GateProcessorV2])


def test_v1_and_v2_gate_processors_decide_as_the_hf_engine():
    import numpy as np
    from vllm.v1.sample.logits_processor import BatchUpdate
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext

    from latentcot.backends.vllm import RULE_KEY, GateProcessor, GateProcessorV2
    from vllm import SamplingParams

    logits = _constructed_logits()
    entropy, (p_max, argmax), fires = _hf_decisions(logits, threshold=1.5)
    assert 0 < int(fires.sum()) < len(logits)  # the constructed rows fall on both sides of τ

    # V1: rows come and go through the persistent batch's updates; a row's step is its output length
    v1 = GateProcessor(None, torch.device("cpu"), False)
    outputs = [[1, 2], [3], [], [4, 5, 6]]
    added = [(i, SamplingParams(extra_args={RULE_KEY: _rule(f"r{i}", 1.5)}), None, outputs[i]) for i in range(4)]
    v1.update_state(BatchUpdate(batch_size=4, removed=[], added=added, moved=[]))
    out_v1 = v1.apply(logits.clone())

    # V2: rules per request slot, rows mapped to slots by the step's context; step = tokens seen - prompt
    prompt_len = np.array([0, 5, 0, 3, 0, 9, 4, 0])
    v2 = GateProcessorV2(None, type("ReqStates", (), {"prompt_len": type("Host", (), {"np": prompt_len})})())
    slots = [5, 1, 6, 3]  # logits row -> request slot, as the runner reorders rows every step
    for row, slot in enumerate(slots):
        assert v2.add_request(slot, SamplingParams(extra_args={RULE_KEY: _rule(f"r{row}", 1.5)}))
    assert not v2.add_request(0, SamplingParams())  # a request without a gate rule is left alone
    seen = np.array([prompt_len[s] + len(outputs[row]) for row, s in enumerate(slots)])
    ctx = LogitsContext(
        expanded_idx_mapping=torch.tensor(slots),
        idx_mapping=torch.tensor(slots),
        idx_mapping_np=np.array(slots),
        expanded_local_pos=torch.zeros(4, dtype=torch.long),
        input_ids=torch.zeros(4, dtype=torch.long),
        pos=torch.tensor(seen - 1),
        seq_lens_upper_bound_np=seen,
    )
    out_v2 = v2.apply(logits.clone(), ctx)

    for processor, out in ((v1, out_v1), (v2, out_v2)):
        records = processor.take([f"r{i}" for i in range(4)])
        for i in range(4):
            ((step, rec),) = records[f"r{i}"].items()
            assert step == len(outputs[i])
            assert rec.entropy == pytest.approx(float(entropy[i]), abs=1e-6)
            assert rec.p_max == pytest.approx(float(p_max[i]), abs=1e-6) and rec.argmax == int(argmax[i])
            assert rec.fired == bool(fires[i])
            if rec.fired:  # only the sentinel can be sampled; the logits are kept for the latent
                assert torch.isinf(out[i]).sum() == out.shape[1] - 1 and out[i, 7] == 0
                torch.testing.assert_close(rec.logits, logits[i])
            else:
                torch.testing.assert_close(out[i], logits[i])


def test_the_gate_processor_follows_the_runner_vllm_will_use(saved_model, monkeypatch):
    from latentcot.backends.vllm import VLLMEngine, runner_v2

    options = dict(model=str(saved_model), enable_prompt_embeds=True, max_model_len=256, kv_cache_memory_bytes=2**28)
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "0")
    assert runner_v2(options) is False
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    from vllm.triton_utils import HAS_TRITON

    if HAS_TRITON:
        assert runner_v2(options) is True
    else:  # vLLM itself refuses Model Runner V2 here (CPU): one line, no traceback
        backend = BackendConfig("vllm", max_model_len=256, kv_cache_gib=0.25, enforce_eager=True)
        with pytest.raises(InputError, match="Model Runner V2 requires Triton"):
            VLLMEngine.load(ModelConfig(str(saved_model), dtype="float32"), backend)


def test_the_manifest_names_the_model_runner(vllm_engine):
    from vllm.triton_utils import HAS_TRITON

    if HAS_TRITON:  # GPUs: Model Runner V2, latent steps inside the engine
        assert (vllm_engine.identity["model_runner"], vllm_engine.identity["latent_steps"]) == ("v2", "in-engine")
    else:  # CPU: no Triton, the V1 runner re-prefills
        assert (vllm_engine.identity["model_runner"], vllm_engine.identity["latent_steps"]) == ("v1", "re-prefill")
