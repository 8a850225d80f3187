"""Latent steps inside vLLM's Model Runner V2: no re-prefill, one request per row for the whole decode.

Model Runner V2 (vLLM's default wherever Triton runs, i.e. on GPUs) lets a model class supply its own
per-step input preparation, a ``ModelState``. latentcot registers, for every causal-LM architecture
vLLM knows, a subclass named ``Latentcot<Arch>`` (through vLLM's ``vllm.general_plugins`` entry
point, :func:`register`; nothing is patched). The backend asks for it with
``hf_overrides={"architectures": ["Latentcot<Arch>"]}``. Per decode step:

1. The model's ``compute_logits`` keeps the final hidden state of every logits row in a persistent
   buffer (``LatentModelState.hidden``), for the hidden latent modes.
2. The gate (``GateProcessorV2``, a logits processor in vLLM's sampler) computes entropy and decides.
   On a latent step it forces the *placeholder* token, a token the gate never lets a token step sample,
   and asks the state to build the latent from the step's logits (and hidden state) with the same
   ``latentcot.latent`` code as the hf engine: :meth:`LatentModelState.write_latents` puts it in the
   request slot's row of ``latents`` and marks the slot ``pending``.
3. The sampled placeholder becomes the request's next input token. ``prepare_inputs`` embeds the step's
   tokens into a persistent ``inputs_embeds`` buffer (persistent so CUDA graphs replay against the
   same memory) and overlays the pending latent on each placeholder row
   (:func:`overlay_latents`). The KV cache then holds the latent's keys and values like any token's.

What it does not do: speculative decoding and pipeline parallelism are refused when the engine is
built (one logits row per request, and one rank that both embeds and samples). A request that vLLM
preempts and recomputes would re-embed its placeholders as the placeholder token: the state notes it
(``recomputed``) and the backend refuses the batch with a clear message instead of returning wrong
records. Prompts never contain latent steps, so prefix caching only ever reuses blocks of real
tokens; requests still carry a cache salt per setting.

Only Model Runner V2 has model states; the V1 runner (CPU) keeps the re-prefill path of
``latentcot.backends.vllm``.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from latentcot.config import LatentConfig
from latentcot.latent import (
    HiddenLatent,
    MeanEmbeddingLatent,
    NormedHiddenLatent,
    SoftLatent,
    TopKSoftLatent,
    ZeroLatent,
    make_latent,
)
from latentcot.sampling import distribution_stats
from latentcot.types import EmbeddingTable, StepView

ARCH_PREFIX = "Latentcot"
MODULE = __name__
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")  # how vLLM names causal language-model architectures


# ---------------------------------------------------------------------------------------------------
# Which latent modes run in the engine, and how a mode travels to the worker (SamplingParams.extra_args)


def latent_spec(latent) -> dict[str, Any]:
    """A latent mode as plain data for the worker; ``ValueError`` for modes the engine cannot build
    (they need per-row generators, the sampled token or the whole batch)."""
    if isinstance(latent, SoftLatent):
        return {"kind": "soft", "temperature": float(latent.temperature)}
    if isinstance(latent, TopKSoftLatent):
        return {"kind": "topk-soft", "top_k": latent.k, "temperature": float(latent.temperature), "min_p": latent.min_p}
    plain = {HiddenLatent: "hidden", NormedHiddenLatent: "hidden-normed", ZeroLatent: "zero"}
    plain[MeanEmbeddingLatent] = "mean-embedding"
    if type(latent) in plain:
        return {"kind": plain[type(latent)]}
    raise ValueError(f"the latent mode {type(latent).__name__} does not run inside vLLM")


IN_ENGINE_LATENTS = ("soft", "topk-soft", "hidden", "hidden-normed", "zero", "mean-embedding")


@functools.lru_cache(maxsize=64)
def _latent_of(spec: tuple) -> Any:
    return make_latent(LatentConfig(**dict(spec)))


def latent_from_spec(spec: dict[str, Any]):
    """The latent mode of a ``latent_spec`` (built once per distinct spec)."""
    return _latent_of(tuple(sorted(spec.items())))


# ---------------------------------------------------------------------------------------------------
# The per-step overlay: pure tensor code, shared by the model state and its tests


def overlay_latents(
    embeds: torch.Tensor,
    input_ids: torch.Tensor,
    last_rows: torch.Tensor,
    slots: torch.Tensor,
    pending: torch.Tensor,
    latents: torch.Tensor,
    placeholder: int,
) -> torch.Tensor:
    """Put each request's pending latent on its placeholder row, in place; returns which requests took one.

    embeds (N, D) the step's input embeddings; input_ids (N,); last_rows (R,) the flat row of each
    request's last scheduled token (a decode step's only one); slots (R,) the request slots; pending
    (S,) bool and latents (S, D) per slot. A request takes its latent only when its last token is the
    placeholder *and* a latent is pending for its slot, so a placeholder id inside a prompt is left as
    it is. The taken slots are cleared: a latent is fed exactly once."""
    take = (input_ids[last_rows] == placeholder) & pending[slots]  # (R,)
    embeds[last_rows] = torch.where(take[:, None], latents[slots].to(embeds.dtype), embeds[last_rows])
    pending[slots] = pending[slots] & ~take
    return take


# ---------------------------------------------------------------------------------------------------
# vLLM pieces (imported lazily: this module loads without vLLM for the pure parts above)


def register() -> None:
    """vLLM ``general_plugins`` entry point: register ``Latentcot<Arch>`` for every causal-LM architecture,
    lazily (``module:Class`` strings: nothing is imported until vLLM loads one). Runs in every vLLM process,
    possibly more than once; registering again is harmless."""
    from vllm import ModelRegistry

    for arch in sorted(ModelRegistry.get_supported_archs()):
        if arch.endswith(CAUSAL_SUFFIXES) and not arch.startswith(ARCH_PREFIX):
            ModelRegistry.register_model(ARCH_PREFIX + arch, f"{MODULE}:{ARCH_PREFIX}{arch}")


def latent_architecture(architectures: list[str] | None) -> str:
    """The registered latent twin of a checkpoint's architecture (``ValueError`` if it has none)."""
    arch = (architectures or [""])[0]
    if not arch.endswith(CAUSAL_SUFFIXES):
        raise ValueError(f"latent steps inside vLLM need a causal-LM architecture, not {arch or 'none'}")
    return ARCH_PREFIX + arch


def __getattr__(name: str):  # PEP 562: vLLM's lazy registry resolves "Latentcot<Arch>" here
    if name.startswith(ARCH_PREFIX) and name.endswith(CAUSAL_SUFFIXES):
        return _latent_model_class(name.removeprefix(ARCH_PREFIX))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _latent_model_class(base_arch: str) -> type:
    """``Latentcot<base_arch>``: vLLM's own class for the architecture, plus the model state and the
    hidden-state capture. One class per architecture, built once per process."""
    from vllm import ModelRegistry

    registered = ModelRegistry.models.get(base_arch)
    if registered is None:
        raise AttributeError(f"vLLM has no architecture {base_arch}")
    base = registered.load_model_cls()

    class LatentArm(base):  # type: ignore[misc, valid-type]
        latentcot_state: LatentModelState | None = None  # set by the state when the runner builds it

        @staticmethod
        def get_model_state_cls():
            return _latent_state_class()

        def compute_logits(self, hidden_states: torch.Tensor):
            logits = super().compute_logits(hidden_states)
            if self.latentcot_state is not None:  # rows of hidden_states are the rows of logits
                self.latentcot_state.keep_hidden(hidden_states)
            return logits

    LatentArm.__name__ = LatentArm.__qualname__ = ARCH_PREFIX + base_arch
    LatentArm.__module__ = MODULE
    return LatentArm


@functools.cache
def _latent_state_class() -> type:
    from vllm.v1.worker.gpu.model_states.default import DefaultModelState

    class State(LatentModelState, DefaultModelState):
        pass

    State.__name__ = State.__qualname__ = "LatentcotModelState"
    return State


class LatentModelState:
    """Mixed into vLLM's ``DefaultModelState`` (see :func:`_latent_state_class`): the persistent buffers of
    the latent arm and the hooks the runner calls. Shapes: S = max_num_reqs slots, N = max_num_tokens."""

    def __init__(self, vllm_config, model, encoder_cache, device: torch.device):
        super().__init__(vllm_config, model, encoder_cache, device)  # type: ignore[call-arg]
        _refuse_unsupported(vllm_config)
        width = self.inputs_embeds_size
        self.placeholder: int | None = None  # set by the first request (its gate rule names it)
        self.latents = torch.zeros(self.max_num_reqs, width, dtype=self.dtype, device=device)  # (S, D)
        self.pending = torch.zeros(self.max_num_reqs, dtype=torch.bool, device=device)  # (S,)
        self.hidden = torch.zeros(self.max_num_reqs, width, dtype=self.dtype, device=device)  # (S, D) by logits row
        self.embeds = torch.zeros(self.max_num_tokens, width, dtype=self.dtype, device=device)  # (N, D)
        self.recomputed: set[str] = set()  # gate keys of requests that came back with placeholders to re-embed
        self.kept_rows = 0  # logits rows whose hidden state compute_logits kept at the latest step
        self.table = self._embedding_table()
        model.latentcot_state = self

    def _embedding_table(self) -> EmbeddingTable:
        """Every input embedding, as the model's own ``embed_input_ids`` gives it (scale included; under
        tensor parallelism it gathers the shards, so each rank holds the whole table)."""
        vocab = self.model_config.get_vocab_size()
        with torch.no_grad():
            weight = self.model.embed_input_ids(torch.arange(vocab, device=self.device))  # (V, D)
        return EmbeddingTable(weight=weight, mean_norm=weight.float().norm(dim=-1).mean())

    # -- runner hooks ----------------------------------------------------------------------------------

    def custom_sampler(self, sampler):
        """Hand the gate processor this state (it builds latents through :meth:`write_latents`); the
        sampler itself stays vLLM's."""
        from latentcot.backends.vllm import GateProcessorV2

        gates = [p for p in getattr(sampler, "logits_processors", ()) if isinstance(p, GateProcessorV2)]
        if not gates:
            raise ValueError("the latentcot gate processor is not installed (pass logits_processors=[GateProcessorV2])")
        gates[0].latent_arm = self
        return None

    def add_request(self, req_index: int, new_req_data) -> None:
        super().add_request(req_index, new_req_data)  # type: ignore[misc]
        self.pending[req_index] = False  # a recycled slot: nothing of its previous request is fed
        rule = _rule_of(new_req_data.sampling_params)
        if rule is None:
            return
        self.placeholder = rule["sentinel"]
        generated = list(new_req_data.prefill_token_ids or ())[new_req_data.prompt_len :]
        if self.placeholder in generated:  # preempted and recomputed: its latents are gone
            self.recomputed.add(rule["key"])

    def prepare_inputs(self, input_batch, req_states) -> dict[str, Any]:
        inputs = super().prepare_inputs(input_batch, req_states)  # type: ignore[misc]
        n, r = input_batch.num_tokens, input_batch.num_reqs
        embeds = self.embeds[: input_batch.num_tokens_after_padding]
        embeds[:n].copy_(self.model.embed_input_ids(input_batch.input_ids[:n]))
        if self.placeholder is not None and r > 0:
            last_rows = (input_batch.query_start_loc[1 : r + 1] - 1).long()  # (R,)
            slots = input_batch.idx_mapping[:r].long()  # (R,)
            overlay_latents(
                embeds, input_batch.input_ids[:n], last_rows, slots, self.pending, self.latents, self.placeholder
            )
        return {**inputs, "inputs_embeds": embeds}

    def prepare_dummy_inputs(self, num_reqs: int, num_tokens: int) -> dict[str, Any]:
        # CUDA-graph capture: the same buffer prepare_inputs fills, so replays read the live values
        return {**super().prepare_dummy_inputs(num_reqs, num_tokens), "inputs_embeds": self.embeds[:num_tokens]}  # type: ignore[misc]

    # -- called from the model and the gate ------------------------------------------------------------

    def keep_hidden(self, hidden_states: torch.Tensor) -> None:
        rows = min(hidden_states.shape[0], self.hidden.shape[0])
        self.hidden[:rows].copy_(hidden_states[:rows])
        self.kept_rows = rows

    def write_latents(self, rows: list[int], slots: list[int], logits: torch.Tensor, rules: list[dict]) -> None:
        """Build the latents of the fired logits rows ``rows`` (request slots ``slots``) from their fp32
        ``logits`` (F, V), each with its rule's latent mode, and mark them pending for the next step."""
        needs_hidden = any(rule["latent"]["kind"].startswith("hidden") for rule in rules)
        if needs_hidden and self.kept_rows <= max(rows):  # compute_logits never reached this state: no zeros fed
            raise RuntimeError("hidden latents: the model's compute_logits did not hand its hidden states over")
        write_latents(self.latents, self.pending, self.table, self.hidden, rows, slots, logits, rules)


def write_latents(latents, pending, table, hidden, rows, slots, logits, rules) -> None:
    """The body of :meth:`LatentModelState.write_latents`, on plain tensors (tested without vLLM)."""
    _, entropy = distribution_stats(logits)
    by_mode: dict[tuple, list[int]] = {}
    for i, rule in enumerate(rules):
        by_mode.setdefault(tuple(sorted(rule["latent"].items())), []).append(i)
    device = latents.device
    for spec, members in by_mode.items():
        pick = torch.tensor(members, device=device)
        view = StepView(
            step=0,
            logits=logits[pick],
            entropy=entropy[pick],
            hidden=hidden[torch.tensor([rows[i] for i in members], device=device)],
            n_latent=torch.zeros(len(members), dtype=torch.long, device=device),
            latent_run=torch.zeros(len(members), dtype=torch.long, device=device),
            active=torch.ones(len(members), dtype=torch.bool, device=device),
        )
        target = torch.tensor([slots[i] for i in members], device=device)
        latents[target] = _latent_of(spec)(view, table).to(latents.dtype)
        pending[target] = True


def _rule_of(sampling_params) -> dict | None:
    from latentcot.backends.vllm import RULE_KEY

    return ((getattr(sampling_params, "extra_args", None) or {}).get(RULE_KEY)) or None


def _refuse_unsupported(vllm_config) -> None:
    """Configurations whose steps have more than one logits row per request, or split embedding and
    sampling across ranks: the overlay assumes neither."""
    if vllm_config.speculative_config is not None:
        raise ValueError("latentcot's in-engine latent steps do not support speculative decoding")
    if vllm_config.parallel_config.pipeline_parallel_size > 1:
        raise ValueError("latentcot's in-engine latent steps do not support pipeline parallelism")
