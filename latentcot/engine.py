"""Hybrid token/latent decoding: batched prefill, then one KV-cached forward per step.

At every step and for every row the gate picks the next input: the embedding of a sampled token
(ordinary chain of thought) or a latent vector (continuous thought), combined with
``where(is_latent, latent, embed(token))`` so rows of one batch can take different modes in the
same forward. The engine never touches files.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import NamedTuple

import torch
from transformers import DynamicCache

from latentcot.config import DecodeConfig
from latentcot.decoding import (
    check_prompts_room,
    check_room,
    context_length,
    eos_token_ids,
    render_completion,
    stop_hit,
)
from latentcot.errors import InputError
from latentcot.gates import Gate
from latentcot.kvcache import preallocated_cache
from latentcot.latent import LatentMode
from latentcot.measure import make_observers
from latentcot.rows import CORE_FIELDS, FINISH, MODES, LiveRows, Retired, RowCounters, StepLog, select_view
from latentcot.sampling import choose_tokens, distribution_stats, make_generators, row_seed
from latentcot.tree import Arm, Choice, Tree, idle_choice, input_keys, latent_ids_of, latent_inputs, marker_blend
from latentcot.types import LATENT, DecodedStep, EmbeddingTable, StepView, Trace


class Forward(NamedTuple):
    """What one forward gives the loop, at the last position of every row."""

    logits: torch.Tensor  # (B, V) fp32
    hidden: torch.Tensor  # (B, D) final post-norm hidden state: the LM head's input
    loops: torch.Tensor | None  # (B,) long, iterations a looped model applied; None for other models


class _CachedForward:
    """Forwards of one ``generate`` call on its KV cache. Used as a context manager: while open, a hook
    on the LM head keeps the head's input (the final post-norm hidden state), which is cheaper than
    ``output_hidden_states=True`` (every layer) and exactly what the logits are computed from."""

    def __init__(self, model, cache: DynamicCache, options: dict):
        self.model, self.cache, self.options = model, cache, options  # options: e.g. looping=LoopConfig
        self._head_input: torch.Tensor | None = None

    def __enter__(self) -> _CachedForward:
        self._hook = self.model.get_output_embeddings().register_forward_pre_hook(self._keep_head_input)
        return self

    def __exit__(self, *_) -> None:
        self._hook.remove()

    def _keep_head_input(self, module, args) -> None:
        self._head_input = args[0]

    def __call__(self, mask: torch.Tensor, positions: torch.Tensor, **inputs) -> Forward:
        out = self.model(
            **inputs,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
            **self.options,
        )
        loops = getattr(out, "loops", None)
        return Forward(out.logits[:, -1].float(), self._head_input[:, -1], loops[:, -1] if loops is not None else None)

    def probe(self, mask: torch.Tensor, positions: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        """Next-position logits (B, V) with ``embeds`` (B, D) fed; the cache forgets the position afterwards."""
        logits = self(mask, positions, inputs_embeds=embeds[:, None]).logits
        self.cache.crop(-1)
        return logits


class TreeResult(NamedTuple):
    traces: dict[tuple[int, int], Trace]  # (prompt index, arm index) -> trace
    spilled: list[tuple[int, tuple[int, ...]]]  # (prompt index, arms) that found no room: decode them again
    forward_rows: int  # rows computed by forwards while active (prefill: one per prompt)
    trajectories: int  # distinct trajectories decoded
    peak_rows: int  # the most rows the batch held at once (at most max_rows, or the prompts when fewer)


def _without_emitted(trace: Trace) -> Trace:
    """An arm that never emits on latent steps has no ``emitted`` array (a tree with one that does keeps it)."""
    return dataclasses.replace(trace, extra={k: v for k, v in trace.extra.items() if k != "emitted"})


def _select_forward(out: Forward, parent: torch.Tensor) -> Forward:
    return Forward(out.logits[parent], out.hidden[parent], out.loops[parent] if out.loops is not None else None)


class Engine:
    """Decodes batches of prompts with a model and its tokenizer (left padding)."""

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.device = model.device
        self.embed = model.get_input_embeddings()
        self.table = EmbeddingTable.from_module(self.embed)  # on the scale the embedding module produces
        self.context = context_length(model.config)
        eos = eos_token_ids(tokenizer, getattr(model.generation_config, "eos_token_id", None))
        self.eos_ids = torch.tensor(eos, dtype=torch.long, device=self.device)

    def check_room(self, prompts: Sequence[str], max_new_tokens: int, names: Sequence[str]) -> None:
        """Raise InputError naming the first prompt that leaves no room for max_new_tokens."""
        check_prompts_room(self.tokenizer, prompts, max_new_tokens, names, self.context)

    def check_loop(self, cfg: DecodeConfig) -> None:
        """Raise InputError when loop settings are asked of a model that does not loop. A model that
        takes a ``looping=`` argument says so with a true ``supports_looping`` attribute."""
        if cfg.loop is not None and not getattr(self.model, "supports_looping", False):
            raise InputError(f"--loops/--exit need a looped model; this is a {self.model.config.model_type} model")

    def _marker_ids(self, cfg: DecodeConfig) -> tuple[int, int] | None:
        if cfg.markers is None:
            return None
        ids = []
        for text in cfg.markers:
            token_id = self.tokenizer.convert_tokens_to_ids(text)
            if token_id is None or token_id == self.tokenizer.unk_token_id:
                raise InputError(f"marker {text!r} is not a single token of this tokenizer")
            ids.append(token_id)
        return ids[0], ids[1]

    def generate(
        self,
        prompts: Sequence[str],
        gate: Gate,
        latent: LatentMode,
        cfg: DecodeConfig,
        seed: int | Sequence[int] = 0,
        measure: Sequence[str] = (),
    ) -> list[Trace]:
        """One Trace per prompt. ``seed``: one run seed (rows get derived seeds) or one seed per row.
        ``measure``: names of step observers adding per-step arrays (see latentcot.measure)."""
        seeds = [row_seed(seed, i) for i in range(len(prompts))] if isinstance(seed, int) else list(seed)
        result = self.decode_tree(prompts, [Arm(gate, latent)], cfg, seeds, measure)
        return [result.traces[(i, 0)] for i in range(len(prompts))]

    @torch.inference_mode()
    def decode_tree(
        self,
        prompts: Sequence[str],
        arms: Sequence[Arm],
        cfg: DecodeConfig,
        seeds: Sequence[int],
        measure: Sequence[str] = (),
        max_rows: int | None = None,
    ) -> TreeResult:
        """Decode every prompt under every arm (gate + latent mode), sharing each prompt's rows among the
        arms while they agree (latentcot.tree); one seed per prompt. The trace of (prompt i, arm k) is the
        trace ``generate`` gives for that prompt under that arm alone. Arms spilled for lack of room
        (``max_rows`` live rows) are listed in the result, to be decoded again."""
        self.check_loop(cfg)
        batch = len(prompts)
        generators = make_generators(seeds, self.device)  # sampling, and any gate or latent mode that draws
        markers = self._marker_ids(cfg)
        # COCONUT-style gates get the markers inserted as steps of their own; a gate that blends them into
        # its inputs (SwiReasoning) asks for the mix through its state's ``marker_weight`` (B, 2) instead.
        inserted = [None if getattr(arm.gate, "blends_markers", False) else markers for arm in arms]
        blending = markers is not None and any(getattr(arm.gate, "blends_markers", False) for arm in arms)
        marker_rows = self.table.rows(torch.tensor(markers, device=self.device)) if markers else None  # (2, D)
        latent_ids = torch.tensor(latent_ids_of(arms), device=self.device)  # (K,) arms with one latent mode share
        emits = torch.tensor([getattr(arm.latent, "emits_tokens", False) for arm in arms], device=self.device)
        observers = make_observers(measure, self.table, self.model.get_output_embeddings())

        enc = self.tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="left")
        ids = enc["input_ids"].to(self.device)  # (B, T)
        prompt_mask = enc["attention_mask"].to(self.device)  # (B, T), 0 = left padding
        width = ids.shape[1]
        check_room(width, cfg.max_new_tokens, self.context)
        mask = torch.ones(batch, width + cfg.max_new_tokens, dtype=prompt_mask.dtype, device=self.device)
        mask[:, :width] = prompt_mask
        positions = (prompt_mask.cumsum(-1) - 1).masked_fill(prompt_mask == 0, 1)  # (B, T), as HF does
        next_position = positions[:, -1:] + 1  # (B, 1)

        cache = preallocated_cache(self.model.config, capacity=width + cfg.max_new_tokens)
        for observer in observers:
            observer.start(cache)
        live = LiveRows(
            cache, mask, next_position, RowCounters.start(batch, self.device), StepLog(emits=bool(emits.any())),
            observers, [arm.gate.start(batch, self.device) for arm in arms], generators,
            [[] for _ in range(batch)], Tree.start(batch, len(arms), self.device),
        )  # fmt: skip
        retired: list[Retired] = []  # finished rows that left the batch
        options = {"looping": cfg.loop} if cfg.loop is not None else {}  # looped models only (check_loop)
        forward_rows, peak_rows = batch, batch
        with _CachedForward(self.model, cache, options) as forward:
            out = forward(prompt_mask, positions, input_ids=ids)
            for t in range(cfg.max_new_tokens):
                probs, entropy = distribution_stats(out.logits)  # (B, V), (B,)
                argmax = out.logits.argmax(-1)  # (B,)
                sampled = argmax if cfg.greedy else choose_tokens(out.logits, cfg, live.generators)
                view = live.counters.view(
                    t, out.logits, entropy, out.hidden, sampled, live.generators, markers, cfg.max_new_tokens
                )
                choice = self._decide(arms, view, live, inserted)  # each (K, B): every arm's wish for every row
                # (K, B, 2) the marker blend a gate asks for (SwiReasoning's switches), else None
                blends = torch.stack([marker_blend(st, sampled) for st in live.states]) if blending else None
                # where the arms a row carries would feed different inputs, it forks (one arm: never)
                keys = input_keys(choice, latent_ids, blends) if len(arms) > 1 else None
                parent = live.tree.split(keys, live.counters.active, max_rows) if keys is not None else None
                if parent is not None:
                    live.select(parent)  # rows forked: every per-row thing follows its parent
                    out, probs, view = _select_forward(out, parent), probs[parent], select_view(view, parent, live)
                    argmax = argmax[parent]
                    choice = Choice(*(f[:, parent] for f in choice))
                    blends = blends[:, parent] if blends is not None else None
                    peak_rows = max(peak_rows, len(parent))
                step, x = self._step_inputs(arms, choice, blends, view, live, latent_ids, emits, marker_rows)
                rows = live.counters
                live.log.record(step, probs, argmax, rows.active, out.loops)
                rows.advance(step.is_latent)
                if not cfg.ignore_eos:
                    rows.end(step.is_text & torch.isin(step.text_token, self.eos_ids), "eos")
                if cfg.stop:
                    hits = self._stop_hits(cfg.stop, step.text_token, step.is_text, rows.active, live.recent_tokens)
                    rows.end(hits, "stop")
                n_active = int(rows.active.sum())  # the step's one device sync (besides sampling)
                last = t + 1 == cfg.max_new_tokens or n_active == 0
                step_mask = live.mask[:, : width + t + 1]
                probe = None if last else functools.partial(forward.probe, step_mask, live.next_position)
                for observer in live.observers:
                    observer.step(step, probe, rows.active)
                if last:
                    break
                if len(x) - n_active >= max(1, len(x) // 4):  # a quarter has finished: finished rows leave
                    x = x[rows.active]
                    retired.append(live.retire(~rows.active))
                forward_rows += n_active  # the rows a decode needs (finished rows waiting to leave aside)
                out = forward(live.mask[:, : width + t + 1], live.next_position, inputs_embeds=x[:, None])
                live.next_position = live.next_position + 1
        retired.append(live.retire(torch.ones_like(live.counters.active)))
        return TreeResult(
            self._collect(retired, prompts, emits.tolist()), live.tree.spilled, forward_rows,
            sum(len(r.prompt) for r in retired), peak_rows,
        )  # fmt: skip

    def _step_inputs(self, arms, choice, blends, view, live, latent_ids, emits, marker_rows):
        """This step as the rows take it — each row as its lead arm (all its arms agree) decided — and the
        next input x (B, D): ``where(is_latent, latent, embed(token))``, plus any marker blend a gate asks for."""
        lead = live.tree.lead  # (B,)
        rows = live.counters
        is_latent, is_marker, fed, rows.after_begin, rows.after_end = (f.gather(0, lead[None])[0] for f in choice)
        latent_vector = functools.cache(functools.partial(latent_inputs, arms, latent_ids[lead], view, self.table))
        step = DecodedStep(view, is_latent, is_marker, fed, latent_vector, is_latent & emits[lead])
        x = self.embed(fed)  # (B, D)
        if bool(is_latent.any()):
            x = torch.where(is_latent[:, None], latent_vector(), x)
        if blends is not None:  # only gates that blend markers (SwiReasoning) ask for it
            blend = blends.gather(0, lead[None, :, None].expand(1, -1, 2))[0]  # (B, 2)
            x = (1 - blend.sum(-1, keepdim=True)).to(x.dtype) * x + blend.to(x.dtype) @ marker_rows
        return step, x

    def _decide(self, arms: Sequence[Arm], view: StepView, live: LiveRows, inserted) -> Choice:
        """Every arm's decision for every row, stacked (K, B); arms no row carries any more are skipped."""
        carried = live.tree.carried.any(1).tolist() if len(arms) > 1 else [True]
        return Choice(*map(torch.stack, zip(*(
            live.counters.decide(arm.gate(view, live.states[k]), view.sampled, inserted[k])
            if carried[k] else idle_choice(view.sampled)
            for k, arm in enumerate(arms)
        ))))  # fmt: skip

    def _collect(self, retired: list[Retired], prompts: Sequence[str], emitting: list[bool]) -> dict:
        """(prompt index, arm index) -> Trace, from every group of rows that left the batch."""
        by_arm = {}
        for group in retired:
            if not group.prompt:
                continue
            per_row = group.log.per_row()
            is_latent_rows = [[m == MODES.index(LATENT) for m in row] for row in per_row["mode"]]
            for observer in group.observers:
                per_row.update(observer.finish(is_latent_rows, lambda i: self.tokenizer.decode([i])))
            traces = self._traces([prompts[i] for i in group.prompt], per_row, group.finish)
            for trace, prompt, carried in zip(traces, group.prompt, group.carried):
                for k in (k for k, on in enumerate(carried) if on):
                    by_arm[(prompt, k)] = trace if emitting[k] or not group.log.emits else _without_emitted(trace)
        return by_arm

    def _stop_hits(
        self,
        stop: tuple[str, ...],
        fed: torch.Tensor,
        is_token: torch.Tensor,
        active: torch.Tensor,
        recent_tokens: list[list[int]],
    ) -> torch.Tensor:
        """(B,) rows whose recent token text contains a stop string (a latent step breaks the text)."""
        hits = torch.zeros_like(active)
        for row, (token, took_token, alive) in enumerate(zip(fed.tolist(), is_token.tolist(), active.tolist())):
            if not alive:
                continue
            if not took_token:
                recent_tokens[row].clear()
                continue
            hits[row] = stop_hit(self.tokenizer, stop, recent_tokens[row], token)
        return hits

    def _traces(self, prompts: Sequence[str], steps: dict[str, list[list]], finish: list[int]) -> list[Trace]:
        traces = []
        for row, prompt in enumerate(prompts):
            keep = [t for t, alive in enumerate(steps["active"][row]) if alive]
            kept = {name: [steps[name][row][t] for t in keep] for name in steps if name != "active"}
            modes = [MODES[m] for m in kept["mode"]]
            reason = FINISH[finish[row]]
            traces.append(
                Trace(
                    prompt=prompt,
                    completion=render_completion(
                        self.tokenizer, modes, kept["token_id"], drop_last=reason == "eos", emitted=kept.get("emitted")
                    ),
                    finish_reason=reason,
                    mode=modes,
                    token_id=kept["token_id"],
                    entropy=kept["entropy"],
                    p_token=kept["p_token"],
                    p_max=kept["p_max"],
                    extra={name: kept[name] for name in kept if name not in CORE_FIELDS},
                )
            )
        return traces
