"""What one decode call keeps per row: counters, the step log, and the bundle of everything a row owns.

Rows are selected together — forked (a row repeated for each group of settings that disagree) or
retired (finished rows leave the batch) — through :class:`LiveRows`, so no per-row thing can be left
behind: KV-cache rows, counters, step log, observers' arrays, gate states, RNG streams, stop-string
text, attention mask and positions, and the tree's bookkeeping.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from latentcot.tree import Choice, Tree, copy_generators, select_state
from latentcot.types import LATENT, MARKER, TOKEN, DecodedStep, StepView

MODES = (TOKEN, LATENT, MARKER)  # codes 0, 1, 2 in the per-step mode tensor
CORE_FIELDS = ("mode", "token_id", "entropy", "p_token", "p_max")
FINISH = ("length", "eos", "stop")


@dataclass
class StepLog:
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


@dataclass
class RowCounters:
    """Per-row decoding state of one ``generate`` call; every tensor is (B,)."""

    n_latent: torch.Tensor  # long, latent steps taken
    latent_run: torch.Tensor  # long, current run of consecutive latent steps
    active: torch.Tensor  # bool, still generating
    finish: torch.Tensor  # long, index into FINISH
    after_begin: torch.Tensor  # bool, the last input was the begin marker
    after_end: torch.Tensor  # bool, the last input was the end marker

    @classmethod
    def start(cls, batch: int, device) -> RowCounters:
        zeros = torch.zeros(batch, dtype=torch.long, device=device)
        false = torch.zeros(batch, dtype=torch.bool, device=device)
        return cls(zeros, zeros.clone(), ~false, zeros.clone(), false, false.clone())

    def view(self, step: int, logits, entropy, hidden, sampled, generators, markers, max_steps) -> StepView:
        return StepView(
            step, logits, entropy, hidden, self.n_latent, self.latent_run, self.active, sampled, generators, markers,
            max_steps,
        )  # fmt: skip

    def decide(self, want_latent: torch.Tensor, sampled: torch.Tensor, markers: tuple[int, int] | None) -> Choice:
        """What the gate's wish means for this step's input, given the markers inserted around latent segments."""
        false = torch.zeros_like(want_latent)
        if markers is None:
            return Choice(want_latent, false, sampled, false, false)
        # A begin marker commits the next step to a latent; an end marker to a token.
        want_latent = (want_latent | self.after_begin) & ~self.after_end
        opening = want_latent & (self.latent_run == 0) & ~self.after_begin
        closing = ~want_latent & (self.latent_run > 0)
        fed = torch.where(opening, markers[0], torch.where(closing, markers[1], sampled))
        return Choice(want_latent & ~opening, opening | closing, fed, opening, closing)

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


@dataclass
class LiveRows:
    """Everything that belongs to the rows still in the batch of one decode call."""

    cache: Any  # the KV cache (rows along dim 0 of every layer)
    mask: torch.Tensor  # (B, prompt width + max_new_tokens) attention mask
    next_position: torch.Tensor  # (B, 1) position id of the next input
    counters: RowCounters
    log: StepLog
    observers: list  # StepObservers, each with (B, ...) arrays
    states: list  # per arm: its gate's per-row state, or None
    generators: list[torch.Generator]  # per row
    recent_tokens: list[list[int]]  # per row, the text tokens since the last latent step (stop strings)
    tree: Tree

    def select(self, index: torch.Tensor) -> None:
        """Keep the rows ``index`` (B',) in that order; a repeated row is forked (each copy owns its state)."""
        self.cache.batch_select_indices(index)
        for part in (self.counters, self.log, *self.observers):
            part.reindex(index)
        self.states = [select_state(state, index) for state in self.states]
        rows = index.tolist()
        self.generators = copy_generators(self.generators, rows)
        self.recent_tokens = [list(self.recent_tokens[i]) for i in rows]
        self.mask, self.next_position = self.mask[index], self.next_position[index]

    def retire(self, done: torch.Tensor) -> Retired:
        """What the rows ``done`` (B,) bool leave behind for their traces; then the batch drops them."""
        rows, keep = done.nonzero()[:, 0], (~done).nonzero()[:, 0]
        log, observers = copy.copy(self.log), [copy.copy(o) for o in self.observers]
        for part in (log, *observers):
            part.reindex(rows)
        retired = Retired(
            log, observers, self.tree.prompt[rows].tolist(), self.tree.carried[:, rows].T.tolist(),
            self.counters.finish[rows].tolist(),
        )  # fmt: skip
        self.select(keep)
        self.tree.select(keep)
        return retired


class Retired(NamedTuple):
    """Finished rows, out of the batch: what their traces are built from."""

    log: StepLog
    observers: list
    prompt: list[int]  # per row, the prompt it decoded
    carried: list[list[bool]]  # per row, per arm: the arms whose trace it is
    finish: list[int]  # per row, index into FINISH


def select_view(view: StepView, index: torch.Tensor, live: LiveRows) -> StepView:
    """The view of the rows after a fork (counters and generators already selected in ``live``)."""
    return dataclasses.replace(
        view,
        logits=view.logits[index],
        entropy=view.entropy[index],
        hidden=view.hidden[index],
        n_latent=live.counters.n_latent,
        latent_run=live.counters.latent_run,
        active=live.counters.active,
        sampled=view.sampled[index] if view.sampled is not None else None,
        generators=live.generators,
    )
