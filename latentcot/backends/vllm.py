"""Hybrid token/latent decoding on vLLM: the same records as ``latentcot.engine.Engine``, served by vLLM.

How it works
  * The gate runs inside vLLM. ``GateProcessor``, a vLLM logits processor, sees every decode step's
    fp32 logits (B, V); it computes the entropy, p_max and argmax that the records need and decides the
    gate from per-request rules passed in ``SamplingParams.extra_args``. When the gate fires it forces
    a sentinel token that is also a stop token of the request, so the request ends at that step. Its
    per-step numbers (and the logits of fired steps) travel back through ``RecordsExtension``, a
    worker method called with ``LLM.collective_rpc``.
  * Token segments: one vLLM request per row generates tokens until the gate fires, EOS, a stop
    string, or max_new_tokens. ``p_token`` is vLLM's own log-probability of the sampled token.
  * Latent steps: the latent is built here from the fired step's logits with the same
    ``latentcot.latent`` code on the model's own input-embedding matrix (soft: softmax(logits/T) @ E).
    The row then continues as a new request whose prompt is the embeddings of its whole prefix plus
    the latent (``enable_prompt_embeds``). Rows of a batch proceed independently.

Cost model: a token step costs one decode step, as in any vLLM run. Every latent step ends the row's
request and starts a new one, which prefills the whole prefix again: a row with S switches to latent
pays about S prefills of its length (O(S·L) positions instead of O(L)), unless vLLM's prefix caching
finds the prefix's full KV blocks already computed. Runs with few latent steps (high thresholds)
are cheap; latent-only runs are a prefill per step.

Model runners: vLLM picks Model Runner V2 wherever Triton runs (every GPU) and V1 elsewhere (CPU); the
gate is installed for the runner vLLM will use (``runner_v2``): ``GateProcessorV2`` or ``GateProcessor``,
both around one ``gate_step``. What is described above is the V1 path. On V2 latent steps stay inside
the engine (``latentcot.backends.vllm_latent``): one request per row, the gate forces a placeholder token
and the model state feeds the latent in its place, so nothing is prefilled again.

Supported: token, latent, entropy (caps, per-domain thresholds) and fixed gates; soft and topk-soft
latents (V2 also hidden, hidden-normed, zero, mean-embedding); greedy and sampled decoding (vLLM's
sampler and seeds, so sampled tokens differ from the hf backend's). Refused: markers, --measure.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates
from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as RunnerV2LogitsProcessor

from latentcot.config import BackendConfig, DecodeConfig, ModelConfig
from latentcot.decoding import check_prompts_room, check_room, eos_token_ids, render_completion, stop_hit
from latentcot.errors import InputError
from latentcot.gates import EntropyGate, FixedGate, LatentGate, TokenGate, entropy_in_unit
from latentcot.latent import SoftLatent, TopKSoftLatent
from latentcot.sampling import distribution_stats, row_seed
from latentcot.types import LATENT, TOKEN, EmbeddingTable, StepView, Trace
from vllm import LLM, SamplingParams

RULE_KEY = "latentcot_gate"  # key of the gate rule in SamplingParams.extra_args
TAKE_RECORDS = "latentcot_take_records"  # the worker methods added by RecordsExtension
TAKE_RECOMPUTED = "latentcot_take_recomputed"
CPU_KV_CACHE_GIB = 2.0  # KV cache on a CPU machine when no memory option is given


def gate_rule(gate) -> dict[str, Any]:
    """The in-engine form of a gate: fire (latent) when H > threshold (in unit) within the caps.

    threshold None: never fires; -1: always fires (entropy is >= 0)."""
    rule = {"threshold": None, "unit": "nats", "max_consecutive": None, "max_latent": None}
    if isinstance(gate, TokenGate):
        return rule
    if isinstance(gate, LatentGate):
        return {**rule, "threshold": -1.0}
    if isinstance(gate, FixedGate):  # the first k steps of a row are latent
        return {**rule, "threshold": -1.0, "max_latent": gate.k}
    if isinstance(gate, EntropyGate):
        return {
            "threshold": float(gate.threshold),
            "unit": gate.unit,
            "max_consecutive": gate.max_consecutive,
            "max_latent": gate.max_latent,
        }
    raise InputError(f"the vllm backend cannot run the gate {type(gate).__name__} (use --backend hf)")


@dataclass
class StepRecord:
    """What GateProcessor saw at one step of one request."""

    entropy: float
    p_max: float
    argmax: int
    fired: bool
    logits: torch.Tensor | None = None  # (V,) fp32 on the CPU, only when the gate fired


def gate_step(
    logits: torch.Tensor, index: list[int], rules: list[dict], steps: list[int], records: dict
) -> tuple[list[int], torch.Tensor]:
    """One decode step of the rows ``index`` of ``logits`` (B, V) that carry a gate rule, each at its output
    step ``steps[i]``: records entropy, p_max, argmax and whether the gate fired (``records[key][step]``);
    where it fired, only the rule's sentinel token can be sampled. A re-prefill rule's sentinel is a stop
    token, so the request ends there; an in-engine rule's sentinel is the placeholder that the latent
    replaces, and a token step may never sample it. Updates the rules' latent counters in place. Returns
    the positions (in ``index``) that fired and the fp32 logits (R, V) the gate saw. The same for both
    model runners; they differ only in how rows map to requests."""
    picked = logits[index].float()  # (R, V)
    probs, entropy = distribution_stats(picked)  # (R, V), (R,)
    p_max, argmax = probs.max(dim=-1)  # (R,), (R,)
    threshold = torch.tensor(
        [rule["threshold"] if _allowed(rule) else math.inf for rule in rules], device=logits.device
    )  # (R,)
    units = {rule["unit"] for rule in rules}
    # one unit per batch in practice (one setting per generate call); mixed units take the slow path
    scaled = (
        entropy_in_unit(entropy, units.pop(), picked.shape[-1])
        if len(units) == 1
        else torch.stack([entropy_in_unit(entropy[i], rule["unit"], picked.shape[-1]) for i, rule in enumerate(rules)])
    )
    fired = scaled > threshold  # (R,)
    stats = torch.stack([entropy.double(), p_max.double(), argmax.double(), fired.double()], 1).cpu().tolist()
    fired_rows = fired.nonzero().flatten().tolist()
    # a re-prefill row's latent is built by the driver from these logits; an in-engine row's, in the worker
    kept = [i for i in fired_rows if not rules[i].get("in_engine")]
    saved = dict(zip(kept, picked[kept].cpu().unbind(0))) if kept else {}
    for i, (rule, step, (h, pm, am, f)) in enumerate(zip(rules, steps, stats)):
        records.setdefault(rule["key"], {})[step] = StepRecord(h, pm, int(am), bool(f), saved.get(i))
        rule["n_latent"] += int(f)
        rule["latent_run"] = rule["latent_run"] + 1 if f else 0
    fired_set = set(fired_rows)
    reserved = [  # rules that can fire keep the placeholder for latent steps only
        i
        for i, rule in enumerate(rules)
        if rule.get("in_engine") and rule["threshold"] is not None and i not in fired_set
    ]
    if reserved:
        rows = torch.tensor([index[i] for i in reserved], device=logits.device)
        logits[rows, torch.tensor([rules[i]["sentinel"] for i in reserved], device=logits.device)] = -math.inf
    if fired_rows:
        rows = torch.tensor([index[i] for i in fired_rows], device=logits.device)
        sentinels = torch.tensor([rules[i]["sentinel"] for i in fired_rows], device=logits.device)
        logits[rows] = -math.inf
        logits[rows, sentinels] = 0.0
    return fired_rows, picked


def _allowed(rule: dict) -> bool:
    """May the gate fire at this step of the request (threshold set, caps not reached)?"""
    if rule["threshold"] is None:
        return False
    return (rule["max_consecutive"] is None or rule["latent_run"] < rule["max_consecutive"]) and (
        rule["max_latent"] is None or rule["n_latent"] < rule["max_latent"]
    )


class GateProcessor(LogitsProcessor):
    """The gate under vLLM's V1 model runner (CPU, and GPUs without Triton): rows follow the persistent
    batch's updates; a row's step is its number of output tokens."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.rows: dict[int, tuple[dict, list[int]]] = {}  # batch index -> (rule, live output token ids)
        self.records: dict[str, dict[int, StepRecord]] = {}  # request key -> step -> record

    def is_argmax_invariant(self) -> bool:
        return False  # it forces the sentinel token; greedy requests must see it too

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(
            self.rows,
            batch_update,
            lambda params, _prompt, output: (
                (params.extra_args or {}).get(RULE_KEY) and (dict(params.extra_args[RULE_KEY]), output)
            ),
        )

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        rules, steps = zip(*((rule, len(output)) for rule, output in self.rows.values()))
        fired, _ = gate_step(logits, list(self.rows), list(rules), list(steps), self.records)
        if any(rules[i].get("in_engine") for i in fired):  # V1 has no model state to feed a latent
            raise RuntimeError("in-engine latent steps need Model Runner V2; the V1 runner re-prefills instead")
        return logits

    def take(self, keys: Sequence[str]) -> dict[str, dict[int, StepRecord]]:
        return {key: self.records.pop(key, {}) for key in keys}


class GateProcessorV2(RunnerV2LogitsProcessor):
    """The gate under Model Runner V2 (vLLM's default wherever Triton runs, i.e. on GPUs): rules are kept
    per request slot (``add_request``); each step's ``LogitsContext`` maps rows to slots, and a row's step
    is the tokens it sees minus its prompt. One row per request: speculative decoding is not enabled."""

    def __init__(self, vllm_config, req_states):
        self.prompt_len = req_states.prompt_len  # [max_num_reqs] on the host (.np): no device sync
        self.slots: dict[int, dict] = {}  # request slot -> rule (its own copy: the counters change)
        self.records: dict[str, dict[int, StepRecord]] = {}
        self.latent_arm = None  # the in-engine latent arm's model state, when the model has one

    def add_request(self, req_idx: int, sampling_params) -> bool:
        rule = (sampling_params.extra_args or {}).get(RULE_KEY)
        if rule:
            self.slots[req_idx] = dict(rule)
        else:  # a recycled slot: forget its previous occupant
            self.slots.pop(req_idx, None)
        return bool(rule)

    def apply(self, logits: torch.Tensor, ctx) -> torch.Tensor:
        slots = ctx.idx_mapping_np.tolist()  # batch position (= logits row) -> request slot
        index = [row for row, slot in enumerate(slots) if slot in self.slots]
        if not index:
            return logits
        rules = [self.slots[slots[row]] for row in index]
        seen = ctx.seq_lens_upper_bound_np  # tokens visible to the token being sampled (exact without drafts)
        steps = [int(seen[row]) - int(self.prompt_len.np[slots[row]]) for row in index]
        fired, picked = gate_step(logits, index, rules, steps, self.records)
        in_engine = [i for i in fired if rules[i].get("in_engine")]
        if in_engine:
            if self.latent_arm is None:
                raise RuntimeError("an in-engine latent step was asked of a model without latentcot's model state")
            self.latent_arm.write_latents(
                [index[i] for i in in_engine],
                [slots[index[i]] for i in in_engine],
                picked[in_engine],
                [rules[i] for i in in_engine],
            )
        return logits

    def take(self, keys: Sequence[str]) -> dict[str, dict[int, StepRecord]]:
        return {key: self.records.pop(key, {}) for key in keys}


class RecordsExtension:
    """Mixed into vLLM's worker: hands over (and forgets) the gate processor's records of some requests."""

    def latentcot_take_records(self, keys: Sequence[str]) -> dict[str, dict[int, StepRecord]]:
        runner = self.model_runner
        v2 = getattr(getattr(runner, "sampler", None), "logits_processors", None)  # Model Runner V2
        processors = v2 if v2 is not None else runner.input_batch.logitsprocs.all
        for processor in processors:
            if isinstance(processor, (GateProcessor, GateProcessorV2)):
                return processor.take(keys)
        raise RuntimeError("the latentcot gate processor is not installed in this vLLM worker")

    def latentcot_take_recomputed(self, keys: Sequence[str]) -> list[str]:
        """Which of these requests vLLM preempted and recomputed (in-engine latent arm only)."""
        seen = getattr(getattr(self.model_runner, "model_state", None), "recomputed", set())
        taken = [key for key in keys if key in seen]
        seen.difference_update(taken)
        return taken


@dataclass
class _Row:
    """One prompt's decoding state across its requests."""

    prompt_ids: list[int]
    seed: int
    prefix: torch.Tensor  # (T, D) input embeddings so far, once a latent was fed
    tokens_only: bool = True  # no latent fed yet: the prefix is prompt_ids + token_id
    mode: list[str] = field(default_factory=list)
    token_id: list[int] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)
    p_token: list[float] = field(default_factory=list)
    p_max: list[float] = field(default_factory=list)
    n_latent: int = 0
    latent_run: int = 0
    recent: list[int] = field(default_factory=list)  # token ids since the last latent, for stop strings
    finish: str | None = None
    pending: torch.Tensor | None = None  # (V,) logits of a latent step whose vector is not fed yet

    def record(self, mode: str, token: int, rec: StepRecord, p_token: float) -> None:
        self.mode.append(mode)
        self.token_id.append(token)
        self.entropy.append(rec.entropy)
        self.p_token.append(p_token)
        self.p_max.append(rec.p_max)


class VLLMEngine:
    """Decodes batches of prompts with a vLLM ``LLM`` (see the module docstring); returns ``Trace``s."""

    def __init__(self, llm: LLM, tokenizer, identity: dict[str, Any]):
        self.llm = llm
        self.tokenizer = tokenizer
        self.identity = identity
        vocab = llm.llm_engine.model_config.get_vocab_size()
        self.context = llm.llm_engine.model_config.max_model_len
        gen = llm.llm_engine.model_config.try_get_generation_config() or {}
        self.eos_ids = eos_token_ids(tokenizer, gen.get("eos_token_id"))
        self.sentinel = self.eos_ids[0] if self.eos_ids else 0  # ends a request; EOS ends it anyway
        self.in_engine = identity.get("latent_steps") == "in-engine"
        self.placeholder = placeholder_token(tokenizer, vocab, self.eos_ids)  # stands for a latent in-engine
        self._keys = itertools.count()  # request keys unique within this engine

    @functools.cached_property
    def table(self) -> EmbeddingTable:
        """The model's own input embeddings, here in the driver, for re-prefilled latents (also under tensor
        parallelism: embed_input_ids gathers them). The in-engine path never needs them here."""
        vocab = self.llm.llm_engine.model_config.get_vocab_size()
        weight = self.llm.apply_model(
            lambda model: model.embed_input_ids(torch.arange(vocab, device=next(model.parameters()).device)).cpu()
        )[0]  # (V, D)
        return EmbeddingTable(weight=weight, mean_norm=weight.float().norm(dim=-1).mean())

    @classmethod
    def load(cls, model: ModelConfig, backend: BackendConfig) -> VLLMEngine:
        from latentcot.model import check_causal, config_identity, model_tokenizer, resolve_source

        if model.device not in ("auto", "cpu", "cuda"):
            raise InputError(
                f"--device {model.device} does not apply to the vllm backend, which places the model "
                "itself (choose GPUs with CUDA_VISIBLE_DEVICES)"
            )
        source, is_local, config = check_causal(model)
        tokenizer = model_tokenizer(model, source)
        options = dict(
            tensor_parallel_size=backend.tensor_parallel_size,
            max_model_len=backend.max_model_len,
            enforce_eager=backend.enforce_eager,
        )
        if backend.gpu_memory_utilization is not None:
            options["gpu_memory_utilization"] = backend.gpu_memory_utilization
        kv_cache_gib = backend.kv_cache_gib
        if kv_cache_gib is None and backend.gpu_memory_utilization is None and _on_cpu():
            kv_cache_gib = CPU_KV_CACHE_GIB  # vLLM's default, a fraction of all memory, rarely fits beside other work
        if kv_cache_gib is not None:
            options["kv_cache_memory_bytes"] = int(kv_cache_gib * 2**30)
        engine_options = dict(
            model=source,
            tokenizer=resolve_source(model.tokenizer)[0] if model.tokenizer else source,
            dtype=_dtype(model.dtype, config),
            revision=model.revision,
            trust_remote_code=model.trust_remote_code,
            enable_prompt_embeds=True,
            worker_extension_cls=f"{__name__}.RecordsExtension",
            async_scheduling=False,
            seed=0,
            **{k: v for k, v in options.items() if v is not None},
        )
        try:
            v2 = runner_v2(engine_options)
            if v2:  # latent steps inside the engine: latentcot's twin of the architecture, no prompt embeddings
                from latentcot.backends.vllm_latent import latent_architecture

                engine_options["hf_overrides"] = {"architectures": [latent_architecture(config.architectures)]}
                engine_options["enable_prompt_embeds"] = False
            processor = GateProcessorV2 if v2 else GateProcessor
            llm = LLM(**engine_options, logits_processors=[processor])
        except (ValueError, RuntimeError, OSError) as exc:  # bad options, too little memory, unsupported model
            raise InputError(f"vLLM cannot load {model.model}: {exc}") from None
        from vllm.platforms import current_platform

        import vllm

        model_config = llm.llm_engine.model_config
        identity = {
            **config_identity(model, source, is_local, config),
            "backend": "vllm",
            "vllm_version": vllm.__version__,
            "model_runner": "v2" if v2 else "v1",  # which gate processor runs
            "latent_steps": "in-engine" if v2 else "re-prefill",  # how a latent reaches the model
            "n_parameters": _parameter_count(config),
            "vocab_size": model_config.get_vocab_size(),
            "dtype": str(model_config.dtype).removeprefix("torch."),
            "device": current_platform.device_type,
            "max_model_len": model_config.max_model_len,
        }
        return cls(llm, tokenizer, identity)

    def check_room(self, prompts: Sequence[str], max_new_tokens: int, names: Sequence[str]) -> None:
        check_prompts_room(self.tokenizer, prompts, max_new_tokens, names, self.context, what="vLLM")

    def check_loop(self, cfg: DecodeConfig) -> None:
        """vLLM serves no looped models: loop settings are refused (``unsupported`` says so before loading)."""
        if cfg.loop is not None:
            raise InputError("--loops/--exit are not supported by the vllm backend (use --backend hf)")

    def generate(
        self,
        prompts: Sequence[str],
        gate,
        latent,
        cfg: DecodeConfig,
        seed: int | Sequence[int] = 0,
        measure: Sequence[str] = (),
    ) -> list[Trace]:
        """One Trace per prompt, as ``Engine.generate``; ``measure`` and markers are not supported."""
        if measure:
            raise InputError(f"--measure {measure[0]} is not supported by the vllm backend (use --backend hf)")
        if cfg.markers is not None:
            raise InputError("--markers is not supported by the vllm backend (use --backend hf)")
        rule = gate_rule(gate)
        self.check_latent(latent if rule["threshold"] is not None else None)
        seeds = [row_seed(seed, i) for i in range(len(prompts))] if isinstance(seed, int) else list(seed)
        ids = self.tokenizer(list(prompts))["input_ids"]
        for row_ids in ids:
            check_room(len(row_ids), cfg.max_new_tokens, self.context, what="vLLM")
        if self.in_engine:
            rows = [_Row(list(row_ids), s, torch.zeros(0)) for row_ids, s in zip(ids, seeds)]
            self._decode_in_engine(rows, rule, latent, cfg)
            return [self._trace(prompt, row) for prompt, row in zip(prompts, rows)]
        rows = [_Row(list(row_ids), s, self.table.weight[:0]) for row_ids, s in zip(ids, seeds)]
        while active := [row for row in rows if row.finish is None]:
            keys = [f"{next(self._keys)}" for _ in active]
            requests = [self._request(row, key, rule, cfg) for row, key in zip(active, keys)]
            outputs = self.llm.generate([r for r, _ in requests], [p for _, p in requests], use_tqdm=False)
            records = self.llm.collective_rpc(TAKE_RECORDS, args=(keys,))[0]
            for row, key, output in zip(active, keys, outputs):
                self._absorb(row, output.outputs[0], records[key], cfg)
            self._feed_latents([row for row in active if row.pending is not None], latent, cfg)
        return [self._trace(prompt, row) for prompt, row in zip(prompts, rows)]

    def check_latent(self, latent) -> None:
        """InputError when this engine's latent path cannot build ``latent`` (None: no latent step asked)."""
        if latent is None:
            return
        if self.in_engine:
            from latentcot.backends.vllm_latent import latent_spec

            try:
                latent_spec(latent)
            except ValueError as exc:
                raise InputError(f"{exc} (use --backend hf)") from None
        elif not isinstance(latent, (SoftLatent, TopKSoftLatent)):
            raise InputError(
                "on vLLM's V1 model runner (CPU) the vllm backend builds soft and topk-soft latents only; "
                "hidden, zero and mean-embedding latents run inside the engine on Model Runner V2 (GPUs) "
                "(use --backend hf)"
            )

    def _decode_in_engine(self, rows: list[_Row], rule: dict, latent, cfg: DecodeConfig) -> None:
        """Model Runner V2: one request per row for the whole decode; latent steps happen inside vLLM
        (``latentcot.backends.vllm_latent``). Rows go in groups that fit the KV cache together, so vLLM
        never has to preempt and recompute one (which would lose its latents)."""
        from latentcot.backends.vllm_latent import latent_spec

        spec = latent_spec(latent) if rule["threshold"] is not None else {"kind": "zero"}  # token gate: never built
        salt = json.dumps({"rule": rule, "latent": spec}, sort_keys=True)  # no KV block is shared across settings
        for group in self._fitting_groups(rows, cfg.max_new_tokens):
            keys = [f"{next(self._keys)}" for _ in group]
            requests = []
            for row, key in zip(group, keys):
                prompt, params = self._request(row, key, rule, cfg, in_engine=spec)
                requests.append(({**prompt, "cache_salt": salt}, params))
            outputs = self.llm.generate([r for r, _ in requests], [p for _, p in requests], use_tqdm=False)
            records = self.llm.collective_rpc(TAKE_RECORDS, args=(keys,))[0]
            recomputed = self.llm.collective_rpc(TAKE_RECOMPUTED, args=(keys,))[0]
            if recomputed:
                raise InputError(
                    f"vLLM preempted {len(recomputed)} request(s) with latent steps, which cannot be recomputed: "
                    "lower --batch-size, or give the KV cache more memory (--gpu-memory-utilization)"
                )
            for row, key, output in zip(group, keys, outputs):
                self._absorb(row, output.outputs[0], records[key], cfg, in_engine=True)
                if row.finish is None:  # vLLM ended it (a stop string it matched on the text): as it says
                    row.finish = "stop" if output.outputs[0].finish_reason == "stop" else "length"

    def _fitting_groups(self, rows: list[_Row], max_new_tokens: int) -> list[list[_Row]]:
        """Consecutive groups of rows whose longest possible sequences fit the KV cache at once."""
        cache = self.llm.llm_engine.vllm_config.cache_config
        if not cache.num_gpu_blocks:
            return [rows]
        groups: list[list[_Row]] = [[]]
        used = 0
        for row in rows:
            need = -(-(len(row.prompt_ids) + max_new_tokens) // cache.block_size)  # blocks, rounded up
            if groups[-1] and used + need > cache.num_gpu_blocks:
                groups.append([])
                used = 0
            groups[-1].append(row)
            used += need
        return groups

    def _request(self, row: _Row, key: str, rule: dict, cfg: DecodeConfig, in_engine: dict | None = None):
        """(prompt, SamplingParams) of the row's next segment. ``in_engine``: the latent mode's spec when
        the whole decode is one request with latent steps inside vLLM (the sentinel is then the
        placeholder, not a stop token)."""
        step = len(row.mode)
        sentinel = self.placeholder if in_engine is not None else self.sentinel
        stops = {*([] if cfg.ignore_eos else self.eos_ids), *([] if in_engine is not None else [self.sentinel])}
        extra = {"in_engine": True, "latent": in_engine} if in_engine is not None else {}
        params = SamplingParams(
            max_tokens=cfg.max_new_tokens - step,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            seed=None if cfg.greedy else row_seed(row.seed, f"step{step}"),
            logprobs=0,
            # EOS is handled here (the row's EOS ids), not by vLLM's defaults
            ignore_eos=True,
            stop_token_ids=sorted(stops),
            stop=list(cfg.stop) or None,
            skip_special_tokens=False,
            detokenize=bool(cfg.stop),
            extra_args={
                RULE_KEY: {
                    **rule,
                    "key": key,
                    "n_latent": row.n_latent,
                    "latent_run": row.latent_run,
                    "sentinel": sentinel,
                    **extra,
                }
            },
        )
        if row.tokens_only:
            return {"prompt_token_ids": row.prompt_ids + row.token_id}, params
        return {"prompt_embeds": row.prefix}, params

    def _absorb(
        self, row: _Row, output, records: dict[int, StepRecord], cfg: DecodeConfig, in_engine: bool = False
    ) -> None:
        """Append a segment's steps to the row, ending it as the hf engine would. A re-prefill segment
        ends at its first latent step; an in-engine one runs on through them (its placeholder tokens)."""
        fed: list[int] = []
        for s, token in enumerate(output.token_ids):
            rec = records[s]
            if rec.fired:  # the sentinel stands for a latent step (built in the worker, or in _feed_latents)
                row.record(LATENT, rec.argmax, rec, rec.p_max)
                row.n_latent += 1
                row.latent_run += 1
                row.recent.clear()
                row.pending = None if in_engine else rec.logits
            else:
                row.record(TOKEN, token, rec, math.exp(output.logprobs[s][token].logprob))
                row.latent_run = 0
                fed.append(token)
                if not cfg.ignore_eos and token in self.eos_ids:
                    row.finish = "eos"
                elif cfg.stop and stop_hit(self.tokenizer, cfg.stop, row.recent, token):
                    row.finish = "stop"
            if row.finish is None and len(row.mode) == cfg.max_new_tokens:
                row.finish = "length"
            if row.finish is not None or (rec.fired and not in_engine):
                break
        if not in_engine and not row.tokens_only and fed:
            row.prefix = torch.cat([row.prefix, self.table.weight[fed]])  # (T + n, D)
        if row.finish is not None:
            row.pending = None

    def _feed_latents(self, rows: list[_Row], latent, cfg: DecodeConfig) -> None:
        """Build the latent vectors of rows whose segment ended on a latent step, all at once."""
        if not rows:
            return
        logits = torch.stack([row.pending for row in rows])  # (F, V)
        probs, entropy = distribution_stats(logits)
        view = StepView(
            step=0,
            logits=logits,
            entropy=entropy,
            hidden=torch.empty(len(rows), 0),
            n_latent=torch.tensor([r.n_latent for r in rows]),
            latent_run=torch.tensor([r.latent_run for r in rows]),
            active=torch.ones(len(rows), dtype=torch.bool),
        )
        vectors = latent(view, self.table)  # (F, D)
        for row, vector in zip(rows, vectors):
            if row.tokens_only:  # the first latent: switch the row to an embedding prefix
                prefix_ids = row.prompt_ids + row.token_id[:-1]  # every step before this latent was a token
                row.prefix = self.table.weight[torch.tensor(prefix_ids, dtype=torch.long)]
                row.tokens_only = False
            row.prefix = torch.cat([row.prefix, vector[None].to(row.prefix.dtype)])  # (T + 1, D)
            row.pending = None

    def _trace(self, prompt: str, row: _Row) -> Trace:
        return Trace(
            prompt=prompt,
            completion=render_completion(self.tokenizer, row.mode, row.token_id, drop_last=row.finish == "eos"),
            finish_reason=row.finish,
            mode=row.mode,
            token_id=row.token_id,
            entropy=row.entropy,
            p_token=row.p_token,
            p_max=row.p_max,
        )


def placeholder_token(tokenizer, vocab_size: int, eos_ids: Sequence[int]) -> int:
    """The token that stands for a latent step in-engine: the tokenizer's pad or unk token when it has one
    apart from EOS, else the last id both the tokenizer and the model know. The gate never lets a token
    step sample it, so in a request's output it marks the latent steps and nothing else."""
    known = min(vocab_size, len(tokenizer))
    for candidate in (tokenizer.pad_token_id, tokenizer.unk_token_id):
        if candidate is not None and candidate not in eos_ids and 0 <= candidate < known:
            return int(candidate)
    return next(i for i in range(known - 1, -1, -1) if i not in eos_ids and i != tokenizer.bos_token_id)


def runner_v2(engine_options: dict[str, Any]) -> bool:
    """Whether vLLM will run these options on Model Runner V2 (its own decision: Triton available, no
    feature V2 lacks), so the gate processor of that runner is the one installed."""
    from vllm.engine.arg_utils import EngineArgs

    return bool(EngineArgs(**engine_options).create_engine_config().use_v2_model_runner)


def _dtype(name: str, config) -> str:
    """``auto`` means the checkpoint's dtype, as on the hf backend (vLLM's own auto may downcast
    float32 checkpoints); float16 becomes float32 on a CPU."""
    from vllm.platforms import current_platform

    if name != "auto":
        return name
    saved = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    saved = str(saved).removeprefix("torch.") if saved is not None else "auto"
    return "float32" if saved == "float16" and current_platform.device_type == "cpu" else saved


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.device_type == "cpu" and not os.environ.get("VLLM_CPU_KVCACHE_SPACE")


def _parameter_count(config) -> int | None:
    """Parameters of the architecture, counted on the meta device (no memory, no weights read)."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, TypeError, ImportError):
        return None
    return sum(p.numel() for p in model.parameters())
