"""Looped transformers: one block of k Llama decoder layers applied L times (k⊗L), with weight sharing.

    embeddings → prelude (P layers) → block × L → coda (C layers) → RMSNorm → LM head

The prelude output ``e`` is the state before the first iteration; ``inject`` decides how ``e``
enters every later iteration: ``none`` (plain looping: x_l = s_{l-1}), ``add`` (x_l = s_{l-1} + e)
or ``concat`` (x_l = W [s_{l-1}; e], a learned adapter, at every iteration). With L = 1 and no
prelude/coda the model computes exactly what a Llama model with the block's layers computes.

Every (iteration, layer) application has its own KV-cache slot: effective depth
P + k·L + C slots, which is the config's ``num_hidden_layers``, so ``DynamicCache(config=...)``
fits. Decoding may override L and add an adaptive exit per position (``looping``, a
:class:`latentcot.looping.LoopConfig`); the output then carries ``loops`` (B, T), the iterations
applied at each position. Exit decisions read each iteration's state out through the final norm
and the LM head (without the coda, when there is one).

Exited positions keep their state: iterations after a position's exit still run the block on it
(the batch is computed together), with the exit state carried forward as the input of every
skipped iteration, and their outputs are discarded. The KV entries those skipped iterations write
are therefore the keys/values of the block applied to the exit state; later tokens attend to
them at those depths. Cost is that of the maximum loop count; what the exit changes is the state.

Training may draw L per step (``train_loops="uniform"``, see :func:`training_loops`) and may add
``cosine_weight`` · mean(1 − cos(s_l, s_{l-1})) over successive iterations (``regularizer`` in
the base model's output), pulling iterations toward a fixed point so that exits happen.
Importing this module registers the model with ``AutoConfig`` / ``AutoModelForCausalLM``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, DynamicCache, GenerationMixin, LlamaConfig
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.llama.modeling_llama import (
    LlamaDecoderLayer,
    LlamaPreTrainedModel,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
)

from latentcot.looping import ExitTracker, LoopConfig
from latentcot.repeat import CacheSlot, ensure_cache_depth
from latentcot.zoo.settings import INJECTIONS, MODEL_TYPE, POSITIONS, TRAIN_LOOPS, parse_arch_spec  # noqa: F401


class LoopedConfig(LlamaConfig):
    model_type = MODEL_TYPE
    block_layers: int = 1  # k: decoder layers in the shared block
    loops: int = 1  # L: iterations of the block (decoding may override it)
    prelude: int = 0  # unshared layers before the loop
    coda: int = 0  # unshared layers after the loop
    inject: str = "none"  # none | add | concat: how the prelude output re-enters each iteration
    train_loops: str = "fixed"  # fixed | uniform: L per training step drawn from {1, ..., 2L-1}
    cosine_weight: float = 0.0  # training: weight of the successive-iteration cosine regulariser
    positions: str = "rope"  # rope | learned: rotary in every attention, or (as GPT-2) a learned
    #                                absolute embedding added to the input, which tiny models align digits with faster

    def __post_init__(self, **kwargs):
        for name, low in (("block_layers", 1), ("loops", 1), ("prelude", 0), ("coda", 0)):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= low):
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.inject not in INJECTIONS:
            raise ValueError(f"unknown inject {self.inject!r}; valid: {', '.join(INJECTIONS)}")
        if self.positions not in POSITIONS:
            raise ValueError(f"unknown positions {self.positions!r}; valid: {', '.join(POSITIONS)}")
        if self.train_loops not in TRAIN_LOOPS:
            raise ValueError(f"unknown train_loops {self.train_loops!r}; valid: {', '.join(TRAIN_LOOPS)}")
        if not self.cosine_weight >= 0:
            raise ValueError(f"cosine_weight must be >= 0, got {self.cosine_weight!r}")
        self.num_hidden_layers = self.depth(self.loops)  # one KV-cache slot per layer application
        super().__post_init__(**kwargs)

    def depth(self, loops: int) -> int:
        """Effective depth (layer applications) with ``loops`` iterations."""
        return self.prelude + self.block_layers * loops + self.coda


@dataclass
class LoopedModelOutput(BaseModelOutputWithPast):
    loops: torch.LongTensor | None = None  # (B, T) iterations applied at each position
    regularizer: torch.Tensor | None = None  # () weighted cosine term (training with cosine_weight > 0)


@dataclass
class LoopedCausalLMOutput(CausalLMOutputWithPast):
    loops: torch.LongTensor | None = None  # (B, T) iterations applied at each position


class LoopedPreTrainedModel(LlamaPreTrainedModel):
    config_class = LoopedConfig
    config: LoopedConfig
    _can_record_outputs = {}


class LoopedModel(LoopedPreTrainedModel):
    def __init__(self, config: LoopedConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.embed_positions = (
            nn.Embedding(config.max_position_embeddings, config.hidden_size) if config.positions == "learned" else None
        )
        # layer_idx is only a default: every application writes through its own CacheSlot
        self.prelude = nn.ModuleList(LlamaDecoderLayer(config, i) for i in range(config.prelude))
        self.block = nn.ModuleList(LlamaDecoderLayer(config, config.prelude + i) for i in range(config.block_layers))
        self.coda = nn.ModuleList(
            LlamaDecoderLayer(config, config.depth(config.loops) - config.coda + i) for i in range(config.coda)
        )
        self.adapter = (
            nn.Linear(2 * config.hidden_size, config.hidden_size, bias=False) if config.inject == "concat" else None
        )
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        use_cache=None,
        looping: LoopConfig | None = None,
        readout: Callable[[torch.Tensor], torch.Tensor] | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> LoopedModelOutput:
        """``looping``: loops per token and exit rule (None = the config's L, no exit); an exit rule
        needs ``readout``, mapping states (B, T, D) to logits (B, T, V)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if looping is not None and looping.adaptive and readout is None:
            raise ValueError("an adaptive loop exit needs a readout (use LoopedForCausalLM)")
        kwargs.pop("return_dict", None)
        kwargs.pop("output_attentions", None)
        h = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, D)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        n_loops = looping.loops if looping is not None and looping.loops is not None else self.config.loops
        ensure_cache_depth(past_key_values, self.config.depth(n_loops))
        if position_ids is None:
            seen = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = (torch.arange(h.shape[1], device=h.device) + seen)[None]  # (1, T)
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=h,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            position_ids=position_ids,
        )
        cos_sin = self.rotary_emb(h, position_ids=position_ids)  # 2 × (B, T, head_dim)
        if self.embed_positions is not None:  # absolute positions instead: attention rotates nothing
            h = h + self.embed_positions(position_ids)
            cos_sin = (torch.ones_like(cos_sin[0]), torch.zeros_like(cos_sin[1]))
        states = [h] if output_hidden_states else None

        def apply(layer: nn.Module, x: torch.Tensor, slot: int) -> torch.Tensor:
            cache = CacheSlot(past_key_values, slot) if past_key_values is not None else None
            x = layer(
                x,
                attention_mask=mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=use_cache,
                position_embeddings=cos_sin,
                **kwargs,
            )
            if states is not None:
                states.append(x)
            return x

        for i, layer in enumerate(self.prelude):
            h = apply(layer, h, i)
        h, used, regularizer = self._loop(h, n_loops, apply, looping, readout)
        first_coda = self.config.depth(n_loops) - self.config.coda
        for i, layer in enumerate(self.coda):
            h = apply(layer, h, first_coda + i)
        h = self.norm(h)
        if states is not None:
            states[-1] = h  # as HF models: the last entry is the final (post-norm) state
        return LoopedModelOutput(
            last_hidden_state=h,
            past_key_values=past_key_values if use_cache else None,
            hidden_states=tuple(states) if states is not None else None,
            loops=used,
            regularizer=regularizer,
        )

    def _inject(self, state: torch.Tensor, entry: torch.Tensor, iteration: int) -> torch.Tensor:
        """The input x_l of iteration ``iteration`` (1-based), (B, T, D)."""
        if self.adapter is not None:
            return self.adapter(torch.cat([state, entry], dim=-1))
        if self.config.inject == "add" and iteration > 1:
            return state + entry
        return state

    def _loop(self, entry: torch.Tensor, n_loops: int, apply, looping: LoopConfig | None, readout):
        """Iterate the block; returns the final state (B, T, D), iterations used (B, T), regularizer."""
        k, first = len(self.block), self.config.prelude
        tracker = (
            ExitTracker(looping, n_loops, entry.shape[:-1], entry.device)
            if looping is not None and looping.adaptive
            else None
        )
        regularize = self.training and self.config.cosine_weight > 0 and n_loops > 1
        state, distances = entry, []
        for iteration in range(1, n_loops + 1):
            x = self._inject(state, entry, iteration)
            for j, layer in enumerate(self.block):
                x = apply(layer, x, first + (iteration - 1) * k + j)
            if tracker is not None:  # exited positions keep their exit state
                x = torch.where(tracker.done[..., None], state, x)
            if regularize and iteration > 1:
                distances.append(1 - F.cosine_similarity(x, state, dim=-1).mean())
            state = x
            if tracker is not None and iteration < n_loops:
                tracker.observe(iteration, readout(state))
        used = tracker.used if tracker is not None else torch.full(entry.shape[:-1], n_loops, device=entry.device)
        regularizer = self.config.cosine_weight * torch.stack(distances).mean() if distances else None
        return state, used, regularizer


class LoopedForCausalLM(LoopedPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    supports_looping = True  # forward takes looping=LoopConfig; decoders ask for this, not for the class

    def __init__(self, config: LoopedConfig):
        super().__init__(config)
        self.model = LoopedModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _readout(self, state: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) of an intermediate state, bypassing the LM head's hooks (the engine's
        capture of the final hidden state must see only the real head call)."""
        return F.linear(self.model.norm(state), self.lm_head.weight)

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        logits_to_keep: int | torch.Tensor = 0,
        looping: LoopConfig | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> LoopedCausalLMOutput:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            looping=looping,
            readout=self._readout,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(out.last_hidden_state[:, keep, :])  # (B, T', V)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return LoopedCausalLMOutput(
            loss=loss,
            logits=logits,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            loops=out.loops,
        )


def is_looped(model) -> bool:
    return isinstance(getattr(model, "config", None), LoopedConfig)


def training_loops(config: LoopedConfig, seed: int, step: int) -> int:
    """L for training step ``step``: the config's, or with ``train_loops="uniform"`` a draw from
    {1, ..., 2L-1} (mean L), a pure function of (seed, step) so a resumed run draws the same."""
    if config.train_loops == "fixed":
        return config.loops
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step + 7)
    return int(torch.randint(1, 2 * config.loops, (), generator=generator))


def register() -> None:
    """Make ``AutoConfig`` / ``AutoModel(ForCausalLM)`` know the looped model (safe to call again)."""
    AutoConfig.register(MODEL_TYPE, LoopedConfig, exist_ok=True)
    AutoModel.register(LoopedConfig, LoopedModel, exist_ok=True)
    AutoModelForCausalLM.register(LoopedConfig, LoopedForCausalLM, exist_ok=True)


register()
