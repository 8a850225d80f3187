"""Hybrid token/latent decoding: batched prefill, then one KV-cached forward per step.

At every step and for every row the gate picks the next input: the embedding of a sampled token
(ordinary chain of thought) or a latent vector (continuous thought), combined with
``where(is_latent, latent, embed(token))`` so rows of one batch can take different modes in the
same forward. The engine never touches files.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from transformers import DynamicCache

from latentcot.config import DecodeConfig
from latentcot.errors import InputError
from latentcot.gates import Gate
from latentcot.kvcache import preallocated_cache
from latentcot.latent import LatentMode
from latentcot.measure import StepMeasurements
from latentcot.sampling import choose_tokens, distribution_stats, make_generators, row_seed
from latentcot.types import LATENT, LATENT_TEXT, MARKER, TOKEN, EmbeddingTable, StepView, Trace
from latentcot.zoo.looped import is_looped

MODES = (TOKEN, LATENT, MARKER)  # codes 0, 1, 2 in the per-step mode tensor
CORE_FIELDS = ("mode", "token_id", "entropy", "p_token", "p_max")
FINISH = ("length", "eos", "stop")


@dataclass
class _Steps:
    """Per-step tensors for the whole batch, kept on the device until the loop ends."""

    latent: list[torch.Tensor] = field(default_factory=list)    # each (B,) bool
    marker: list[torch.Tensor] = field(default_factory=list)    # each (B,) bool
    token_id: list[torch.Tensor] = field(default_factory=list)  # each (B,) long
    entropy: list[torch.Tensor] = field(default_factory=list)   # each (B,) fp32
    p_token: list[torch.Tensor] = field(default_factory=list)   # each (B,) fp32
    p_max: list[torch.Tensor] = field(default_factory=list)     # each (B,) fp32
    active: list[torch.Tensor] = field(default_factory=list)    # each (B,) bool: row generating at this step
    loops: list[torch.Tensor] = field(default_factory=list)     # each (B,) long: looped models' iterations

    def record(self, is_latent, is_marker, token_id, entropy, probs, argmax, active) -> None:
        self.latent.append(is_latent)
        self.marker.append(is_marker)
        self.token_id.append(token_id)
        self.entropy.append(entropy)
        self.p_token.append(probs.gather(-1, token_id[:, None])[:, 0])
        self.p_max.append(probs.gather(-1, argmax[:, None])[:, 0])
        self.active.append(active)

    def per_row(self) -> dict[str, list[list]]:
        """(T, B) per field -> per row python lists, one device sync for everything."""
        mode = torch.stack(self.latent, dim=1).long() + 2 * torch.stack(self.marker, dim=1).long()  # MODES index
        names = ("token_id", "entropy", "p_token", "p_max", "active") + (("loops",) if self.loops else ())
        return {"mode": mode.cpu().tolist(), **{name: torch.stack(getattr(self, name), dim=1).cpu().tolist()
                                                for name in names}}


@dataclass
class _Rows:
    """Per-row decoding state of one ``generate`` call; every tensor is (B,)."""

    n_latent: torch.Tensor     # long, latent steps taken
    latent_run: torch.Tensor   # long, current run of consecutive latent steps
    active: torch.Tensor       # bool, still generating
    finish: torch.Tensor       # long, index into FINISH
    after_begin: torch.Tensor  # bool, the last input was the begin marker
    after_end: torch.Tensor    # bool, the last input was the end marker

    @classmethod
    def start(cls, batch: int, device) -> "_Rows":
        zeros = torch.zeros(batch, dtype=torch.long, device=device)
        false = torch.zeros(batch, dtype=torch.bool, device=device)
        return cls(zeros, zeros.clone(), ~false, zeros.clone(), false, false.clone())

    def view(self, step: int, logits, entropy, hidden) -> StepView:
        return StepView(step, logits, entropy, hidden, self.n_latent, self.latent_run, self.active)

    def decide(self, want_latent: torch.Tensor, sampled: torch.Tensor, markers: tuple[int, int] | None):
        """(is_latent, is_marker, fed token ids) for this step, from the gate's wish."""
        if markers is None:
            return want_latent, torch.zeros_like(want_latent), sampled
        # A begin marker commits the next step to a latent; an end marker to a token.
        want_latent = (want_latent | self.after_begin) & ~self.after_end
        opening = want_latent & (self.latent_run == 0) & ~self.after_begin
        closing = ~want_latent & (self.latent_run > 0)
        self.after_begin, self.after_end = opening, closing
        fed = torch.where(opening, markers[0], torch.where(closing, markers[1], sampled))
        return want_latent & ~opening, opening | closing, fed

    def advance(self, is_latent: torch.Tensor) -> None:
        self.n_latent = self.n_latent + is_latent
        self.latent_run = (self.latent_run + 1) * is_latent

    def end(self, rows: torch.Tensor, reason: str) -> None:
        rows = rows & self.active
        self.finish = torch.where(rows, FINISH.index(reason), self.finish)
        self.active = self.active & ~rows


@contextmanager
def _capture_final_hidden(model) -> Iterator[dict]:
    """Capture the input of the LM head: the final post-norm hidden state at the kept positions.

    Cheaper than ``output_hidden_states=True`` (which keeps every layer) and exactly what the
    logits are computed from.
    """
    box: dict = {}
    head = model.get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda module, args: box.__setitem__("hidden", args[0]))
    try:
        yield box
    finally:
        handle.remove()


def context_length(config) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class Engine:
    """Decodes batches of prompts with a model and its tokenizer (left padding)."""

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.device = model.device
        self.embed = model.get_input_embeddings()
        weight = self.embed.weight.detach()                              # (V, D)
        self.table = EmbeddingTable(weight=weight, mean_norm=weight.float().norm(dim=-1).mean())
        self.context = context_length(model.config)
        eos = {tokenizer.eos_token_id, *_as_list(getattr(model.generation_config, "eos_token_id", None))}
        eos.discard(None)
        self.eos_ids = torch.tensor(sorted(eos), dtype=torch.long, device=self.device)

    def check_room(self, prompts: Sequence[str], max_new_tokens: int, names: Sequence[str]) -> None:
        """Raise InputError naming the first prompt that leaves no room for max_new_tokens."""
        if self.context is None:
            return
        lengths = [len(ids) for ids in self.tokenizer(list(prompts))["input_ids"]]
        for name, length in zip(names, lengths):
            self._check_length(length, max_new_tokens, where=name)

    def _check_length(self, length: int, max_new_tokens: int, where: str | None = None) -> None:
        if self.context is not None and length + max_new_tokens > self.context:
            raise InputError(f"prompt of {length} tokens + max_new_tokens {max_new_tokens} exceeds the "
                             f"model's context of {self.context} positions", where=where)

    def check_loop(self, cfg: DecodeConfig) -> None:
        """Raise InputError when loop settings are asked of a model that does not loop."""
        if cfg.loop is not None and not is_looped(self.model):
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

    def _forward(self, cache: DynamicCache, mask: torch.Tensor, positions: torch.Tensor,
                 box: dict, **inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward; returns fp32 logits (B, V) and the final hidden state (B, D) of the last position.
        A looped model also reports the iterations it applied; box["loops"] keeps them, (B,)."""
        out = self.model(**inputs, attention_mask=mask, position_ids=positions, past_key_values=cache,
                         use_cache=True, logits_to_keep=1)
        loops = getattr(out, "loops", None)
        box["loops"] = loops[:, -1] if loops is not None else None
        return out.logits[:, -1].float(), box["hidden"][:, -1]

    @torch.inference_mode()
    def generate(self, prompts: Sequence[str], gate: Gate, latent: LatentMode, cfg: DecodeConfig,
                 seed: int | Sequence[int] = 0, measure: Sequence[str] = ()) -> list[Trace]:
        """One Trace per prompt. ``seed``: one run seed (rows get derived seeds) or one seed per row.
        ``measure``: extra per-step measurements, e.g. ("counterfactual",) (see latentcot.measure)."""
        self.check_loop(cfg)
        batch = len(prompts)
        seeds = [row_seed(seed, i) for i in range(batch)] if isinstance(seed, int) else list(seed)
        generators = None if cfg.greedy else make_generators(seeds, self.device)
        markers = self._marker_ids(cfg)
        looping = {"looping": cfg.loop} if cfg.loop is not None else {}  # looped models only (check_loop)

        enc = self.tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="left")
        ids = enc["input_ids"].to(self.device)                          # (B, T)
        prompt_mask = enc["attention_mask"].to(self.device)             # (B, T), 0 = left padding
        width = ids.shape[1]
        self._check_length(width, cfg.max_new_tokens)
        mask = torch.ones(batch, width + cfg.max_new_tokens, dtype=prompt_mask.dtype, device=self.device)
        mask[:, :width] = prompt_mask
        positions = (prompt_mask.cumsum(-1) - 1).masked_fill(prompt_mask == 0, 1)  # (B, T), as HF does
        next_position = positions[:, -1:] + 1                           # (B, 1)

        rows, steps = _Rows.start(batch, self.device), _Steps()
        recent_tokens: list[list[int]] = [[] for _ in range(batch)]     # only kept for stop strings
        cache = preallocated_cache(self.model.config, capacity=width + cfg.max_new_tokens)
        measured = None
        if "counterfactual" in measure:
            measured = StepMeasurements(self.table, self.model.get_output_embeddings())
            if hasattr(cache, "activate_past_recording"):  # sliding-window layers can then roll a probe back
                cache.activate_past_recording()
        with _capture_final_hidden(self.model) as box:
            logits, hidden = self._forward(cache, prompt_mask, positions, box, input_ids=ids, **looping)
            for t in range(cfg.max_new_tokens):
                probs, entropy = distribution_stats(logits)             # (B, V), (B,)
                view = rows.view(t, logits, entropy, hidden)
                argmax = logits.argmax(-1)                              # (B,)
                sampled = argmax if cfg.greedy else choose_tokens(logits, cfg, generators)
                is_latent, is_marker, fed = rows.decide(gate(view), sampled, markers)
                recorded = torch.where(is_latent, argmax, fed)          # argmax stands for a latent step
                x = self.embed(fed)                                     # (B, D)
                if measured or bool(is_latent.any()):
                    vector = latent(view, self.table)                   # (B, D)
                    x = torch.where(is_latent[:, None], vector, x)
                steps.record(is_latent, is_marker, recorded, entropy, probs, argmax, rows.active)
                if box["loops"] is not None:  # the depth that computed this step's distribution
                    steps.loops.append(box["loops"])
                if measured:
                    measured.latent_geometry(x, is_latent)

                rows.advance(is_latent)
                is_token = ~(is_latent | is_marker)
                if not cfg.ignore_eos:
                    rows.end(is_token & torch.isin(fed, self.eos_ids), "eos")
                if cfg.stop:
                    rows.end(self._stop_hits(cfg.stop, fed, is_token, rows.active, recent_tokens), "stop")
                if t + 1 == cfg.max_new_tokens or not bool(rows.active.any()):
                    if measured:
                        measured.counterfactual(None, None, is_token)
                    break
                probe = None
                if measured:  # the next step as it would be had the latent been fed; then forget it
                    probe, _ = self._forward(cache, mask[:, : width + t + 1], next_position, box,
                                             inputs_embeds=vector[:, None], **looping)
                    cache.crop(-1)
                logits, hidden = self._forward(cache, mask[:, : width + t + 1], next_position, box,
                                               inputs_embeds=x[:, None], **looping)
                if measured:
                    measured.counterfactual(probe, logits, is_token)
                next_position = next_position + 1
        per_row = steps.per_row()
        if measured:
            is_latent_rows = [[m == MODES.index(LATENT) for m in row] for row in per_row["mode"]]
            per_row.update(measured.per_row(is_latent_rows, lambda i: self.tokenizer.decode([i])))
        return self._traces(prompts, per_row, rows.finish.tolist())

    def _stop_hits(self, stop: tuple[str, ...], fed: torch.Tensor, is_token: torch.Tensor,
                   active: torch.Tensor, recent_tokens: list[list[int]]) -> torch.Tensor:
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
            traces.append(Trace(
                prompt=prompt,
                completion=self._render(modes, kept["token_id"], drop_last=reason == "eos"),
                finish_reason=reason,
                mode=modes,
                token_id=kept["token_id"],
                entropy=kept["entropy"],
                p_token=kept["p_token"],
                p_max=kept["p_max"],
                extra={name: kept[name] for name in kept if name not in CORE_FIELDS},
            ))
        return traces

    def _render(self, modes: list[str], token_ids: list[int], drop_last: bool) -> str:
        return render_completion(self.tokenizer, modes, token_ids, drop_last)


def stop_hit(tokenizer, stop: tuple[str, ...], recent: list[int], token: int) -> bool:
    """Append ``token`` to a row's recent token ids (trimmed in place) and say whether their text
    now contains a stop string. The caller clears ``recent`` on a latent step."""
    window = max(len(s) for s in stop) + 1      # a stop string spans at most this many tokens
    recent.append(token)
    del recent[:-window]
    text = tokenizer.decode(recent)
    return any(s in text for s in stop)


def render_completion(tokenizer, modes: list[str], token_ids: list[int], drop_last: bool) -> str:
    """Completion text: runs of fed tokens decoded together, each latent step as LATENT_TEXT."""
    if drop_last:  # the EOS token ends the text, it is not part of it
        modes, token_ids = modes[:-1], token_ids[:-1]
    parts, run = [], []
    for mode, token in zip(modes, token_ids):
        if mode == LATENT:
            if run:
                parts.append(tokenizer.decode(run))
                run = []
            parts.append(LATENT_TEXT)
        else:
            run.append(token)
    if run:
        parts.append(tokenizer.decode(run))
    return "".join(parts)


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
