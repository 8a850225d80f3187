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
from dataclasses import dataclass, field
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
from latentcot.sampling import choose_tokens, distribution_stats, make_generators, row_seed
from latentcot.tree import Arm, Tree, copy_generators, select_state
from latentcot.types import LATENT, MARKER, TOKEN, DecodedStep, EmbeddingTable, StepView, Trace

MODES = (TOKEN, LATENT, MARKER)  # codes 0, 1, 2 in the per-step mode tensor
CORE_FIELDS = ("mode", "token_id", "entropy", "p_token", "p_max")
FINISH = ("length", "eos", "stop")


@dataclass
class _Steps:
    """Per-step tensors for the whole batch, kept on the device until the loop ends."""

    latent: list[torch.Tensor] = field(default_factory=list)  # each (B,) bool
    marker: list[torch.Tensor] = field(default_factory=list)  # each (B,) bool
    token_id: list[torch.Tensor] = field(default_factory=list)  # each (B,) long
    entropy: list[torch.Tensor] = field(default_factory=list)  # each (B,) fp32
    p_token: list[torch.Tensor] = field(default_factory=list)  # each (B,) fp32
    p_max: list[torch.Tensor] = field(default_factory=list)  # each (B,) fp32
    active: list[torch.Tensor] = field(default_factory=list)  # each (B,) bool: row generating at this step
    loops: list[torch.Tensor] = field(default_factory=list)  # each (B,) long: looped models' iterations
    emitted: list[torch.Tensor] = field(default_factory=list)  # each (B,) bool: a latent step that emitted a token
    emits: bool = False  # keep ``emitted``: only methods that emit tokens on latent steps have it in records

    def record(self, step: DecodedStep, probs, argmax, active, loops) -> None:
        """One step: probs (B, V), argmax (B,), active (B,), loops (B,) or None."""
        # argmax stands for a latent step's token, unless the method emitted its sampled token there
        token_id = torch.where(step.is_latent & ~step.emitted, argmax, step.text_token)
        self.latent.append(step.is_latent)
        self.marker.append(step.is_marker)
        self.token_id.append(token_id)
        self.entropy.append(step.view.entropy)
        self.p_token.append(probs.gather(-1, token_id[:, None])[:, 0])
        self.p_max.append(probs.gather(-1, argmax[:, None])[:, 0])
        self.active.append(active)
        if loops is not None:  # the depth that computed this step's distribution (looped models)
            self.loops.append(loops)
        if self.emits:
            self.emitted.append(step.emitted)

    def reindex(self, parent: torch.Tensor) -> None:
        """The history of the rows after a fork: row i's past is that of row parent[i]."""
        for name in ("latent", "marker", "token_id", "entropy", "p_token", "p_max", "active", "loops", "emitted"):
            setattr(self, name, [values[parent] for values in getattr(self, name)])

    def per_row(self) -> dict[str, list[list]]:
        """(T, B) per field -> per row python lists, one device sync for everything."""
        mode = torch.stack(self.latent, dim=1).long() + 2 * torch.stack(self.marker, dim=1).long()  # MODES index
        names = ("token_id", "entropy", "p_token", "p_max", "active") + (("loops",) if self.loops else ())
        names += ("emitted",) if self.emits else ()
        return {
            "mode": mode.cpu().tolist(),
            **{name: torch.stack(getattr(self, name), dim=1).cpu().tolist() for name in names},
        }


class _Choice(NamedTuple):
    """One arm's decision for every row (B,), or every arm's (K, B) once stacked."""

    is_latent: torch.Tensor  # bool
    is_marker: torch.Tensor  # bool
    fed: torch.Tensor  # long, the token fed on a token or marker step
    after_begin: torch.Tensor  # bool, this step feeds the begin marker
    after_end: torch.Tensor  # bool, this step feeds the end marker


@dataclass
class _Rows:
    """Per-row decoding state of one ``generate`` call; every tensor is (B,)."""

    n_latent: torch.Tensor  # long, latent steps taken
    latent_run: torch.Tensor  # long, current run of consecutive latent steps
    active: torch.Tensor  # bool, still generating
    finish: torch.Tensor  # long, index into FINISH
    after_begin: torch.Tensor  # bool, the last input was the begin marker
    after_end: torch.Tensor  # bool, the last input was the end marker

    @classmethod
    def start(cls, batch: int, device) -> _Rows:
        zeros = torch.zeros(batch, dtype=torch.long, device=device)
        false = torch.zeros(batch, dtype=torch.bool, device=device)
        return cls(zeros, zeros.clone(), ~false, zeros.clone(), false, false.clone())

    def view(self, step: int, logits, entropy, hidden, sampled, generators, markers, max_steps) -> StepView:
        return StepView(
            step, logits, entropy, hidden, self.n_latent, self.latent_run, self.active, sampled, generators, markers,
            max_steps,
        )  # fmt: skip

    def decide(self, want_latent: torch.Tensor, sampled: torch.Tensor, markers: tuple[int, int] | None) -> _Choice:
        """What the gate's wish means for this step's input, given the markers inserted around latent segments."""
        false = torch.zeros_like(want_latent)
        if markers is None:
            return _Choice(want_latent, false, sampled, false, false)
        # A begin marker commits the next step to a latent; an end marker to a token.
        want_latent = (want_latent | self.after_begin) & ~self.after_end
        opening = want_latent & (self.latent_run == 0) & ~self.after_begin
        closing = ~want_latent & (self.latent_run > 0)
        fed = torch.where(opening, markers[0], torch.where(closing, markers[1], sampled))
        return _Choice(want_latent & ~opening, opening | closing, fed, opening, closing)

    def reindex(self, parent: torch.Tensor) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name)[parent])

    def advance(self, is_latent: torch.Tensor) -> None:
        self.n_latent = self.n_latent + is_latent
        self.latent_run = (self.latent_run + 1) * is_latent

    def end(self, rows: torch.Tensor, reason: str) -> None:
        rows = rows & self.active
        self.finish = torch.where(rows, FINISH.index(reason), self.finish)
        self.active = self.active & ~rows


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
    trajectories: int  # distinct trajectories decoded (rows of the tree at the end)


def _latent_ids(arms: Sequence[Arm]) -> list[int]:
    """Per arm, the index of the first arm with the same latent mode (same key, or the same object)."""
    ids = []
    for k, arm in enumerate(arms):
        same = (j for j, other in enumerate(arms[:k]) if other.latent is arm.latent or (
            arm.latent_key is not None and other.latent_key == arm.latent_key))  # fmt: skip
        ids.append(next(same, k))
    return ids


def _idle(sampled: torch.Tensor) -> _Choice:
    """The decision of an arm no row carries any more: never looked at."""
    false = torch.zeros_like(sampled, dtype=torch.bool)
    return _Choice(false, false, sampled, false, false)


def _blend(state, sampled: torch.Tensor) -> torch.Tensor:
    """(B, 2) fp32 marker blend a gate asks for (SwiReasoning's switches), zeros for other gates."""
    weight = getattr(state, "marker_weight", None)
    return weight.float() if weight is not None else torch.zeros(sampled.shape[0], 2, device=sampled.device)


def _input_code(choice: _Choice, latent_ids: torch.Tensor) -> torch.Tensor:
    """(K, B) fp32 naming the input each arm feeds: the token id, or -1 - its latent mode's id. Ids below
    2**24 are exact in fp32."""
    latent = -1 - latent_ids[:, None].expand_as(choice.fed)
    return torch.where(choice.is_latent, latent, choice.fed).float()


def _latent_inputs(arms: Sequence[Arm], row_latent: torch.Tensor, view: StepView, table: EmbeddingTable):
    """(B, D) each row's latent vector, from the latent mode of the arm that speaks for it."""
    distinct = row_latent.unique().tolist()
    vector = arms[distinct[0]].latent(view, table)
    for k in distinct[1:]:
        vector = torch.where((row_latent == k)[:, None], arms[k].latent(view, table), vector)
    return vector


def _without_emitted(trace: Trace) -> Trace:
    """An arm that never emits on latent steps has no ``emitted`` array (a tree with one that does keeps it)."""
    return dataclasses.replace(trace, extra={k: v for k, v in trace.extra.items() if k != "emitted"})


def _select_forward(out: Forward, parent: torch.Tensor) -> Forward:
    return Forward(out.logits[parent], out.hidden[parent], out.loops[parent] if out.loops is not None else None)


def _select_view(view: StepView, parent: torch.Tensor, rows: _Rows, generators) -> StepView:
    """The view of the rows after a fork (counters from the reindexed rows, the copied generators)."""
    return dataclasses.replace(
        view,
        logits=view.logits[parent],
        entropy=view.entropy[parent],
        hidden=view.hidden[parent],
        n_latent=rows.n_latent,
        latent_run=rows.latent_run,
        active=rows.active,
        sampled=view.sampled[parent] if view.sampled is not None else None,
        generators=generators,
    )


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
        marker_rows = self.table.rows(torch.tensor(markers, device=self.device)) if markers else None  # (2, D)
        latent_ids = torch.tensor(_latent_ids(arms), device=self.device)  # (K,) arms with one latent mode share
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

        tree = Tree.start(batch, len(arms), self.device)
        states = [arm.gate.start(batch, self.device) for arm in arms]  # per-row memory of stateful rules
        rows, steps = _Rows.start(batch, self.device), _Steps(emits=bool(emits.any()))
        recent_tokens: list[list[int]] = [[] for _ in range(batch)]  # only kept for stop strings
        cache = preallocated_cache(self.model.config, capacity=width + cfg.max_new_tokens)
        for observer in observers:
            observer.start(cache)
        options = {"looping": cfg.loop} if cfg.loop is not None else {}  # looped models only (check_loop)
        forward_rows = batch
        with _CachedForward(self.model, cache, options) as forward:
            out = forward(prompt_mask, positions, input_ids=ids)
            for t in range(cfg.max_new_tokens):
                probs, entropy = distribution_stats(out.logits)  # (B, V), (B,)
                argmax = out.logits.argmax(-1)  # (B,)
                sampled = argmax if cfg.greedy else choose_tokens(out.logits, cfg, generators)
                view = rows.view(t, out.logits, entropy, out.hidden, sampled, generators, markers, cfg.max_new_tokens)
                live = tree.carried.any(1).tolist()  # arms some row still carries
                choice = _Choice(*map(torch.stack, zip(*(
                    rows.decide(arm.gate(view, states[k]), sampled, inserted[k]) if live[k] else _idle(sampled)
                    for k, arm in enumerate(arms)
                ))))  # fmt: skip  # each (K, B)
                blends = torch.stack([_blend(state, sampled) for state in states])  # (K, B, 2)
                keys = torch.cat([_input_code(choice, latent_ids)[..., None], blends], -1)  # (K, B, 3)
                parent = tree.split(keys, rows.active, max_rows) if len(arms) > 1 else None
                if parent is not None:  # some rows forked: every per-row thing follows its parent
                    cache.batch_select_indices(parent)
                    for thing in (rows, steps, *observers):
                        thing.reindex(parent)
                    states = [select_state(state, parent) for state in states]
                    generators = copy_generators(generators, parent.tolist())
                    recent_tokens = [list(recent_tokens[i]) for i in parent.tolist()]
                    mask, next_position, out = mask[parent], next_position[parent], _select_forward(out, parent)
                    probs, choice, blends = probs[parent], _Choice(*(f[:, parent] for f in choice)), blends[:, parent]
                    view = _select_view(view, parent, rows, generators)
                lead = tree.lead  # (B,) the arm that speaks for each row
                is_latent, is_marker, fed, rows.after_begin, rows.after_end = (
                    f.gather(0, lead[None])[0] for f in choice
                )
                latent_vector = functools.cache(
                    functools.partial(_latent_inputs, arms, latent_ids[lead], view, self.table)
                )
                step = DecodedStep(view, is_latent, is_marker, fed, latent_vector, is_latent & emits[lead])
                x = self.embed(fed)  # (B, D)
                if bool(is_latent.any()):
                    x = torch.where(is_latent[:, None], latent_vector(), x)
                if marker_rows is not None:
                    blend = blends.gather(0, lead[None, :, None].expand(1, -1, 2))[0]  # (B, 2)
                    x = (1 - blend.sum(-1, keepdim=True)).to(x.dtype) * x + blend.to(x.dtype) @ marker_rows
                steps.record(step, probs, view.logits.argmax(-1), rows.active, out.loops)

                rows.advance(is_latent)
                if not cfg.ignore_eos:
                    rows.end(step.is_text & torch.isin(step.text_token, self.eos_ids), "eos")
                if cfg.stop:
                    hits = self._stop_hits(cfg.stop, step.text_token, step.is_text, rows.active, recent_tokens)
                    rows.end(hits, "stop")
                last = t + 1 == cfg.max_new_tokens or not bool(rows.active.any())
                step_mask = mask[:, : width + t + 1]
                probe = None if last else functools.partial(forward.probe, step_mask, next_position)
                for observer in observers:
                    observer.step(step, probe)
                if last:
                    break
                forward_rows += int(rows.active.sum())
                out = forward(step_mask, next_position, inputs_embeds=x[:, None])
                next_position = next_position + 1
        per_row = steps.per_row()
        is_latent_rows = [[m == MODES.index(LATENT) for m in row] for row in per_row["mode"]]
        for observer in observers:
            per_row.update(observer.finish(is_latent_rows, lambda i: self.tokenizer.decode([i])))
        traces = self._traces([prompts[i] for i in tree.prompt.tolist()], per_row, rows.finish.tolist())
        emitting = emits.tolist()
        by_arm = {
            (prompt, k): trace if emitting[k] or not steps.emits else _without_emitted(trace)
            for trace, prompt, carried in zip(traces, tree.prompt.tolist(), tree.carried.T.tolist())
            for k, on in enumerate(carried)
            if on
        }
        return TreeResult(by_arm, tree.spilled, forward_rows, len(traces))

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
