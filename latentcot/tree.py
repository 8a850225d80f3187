"""Prefix-shared decoding: several settings decoded as one tree of distinct trajectories.

Settings of a sweep agree on most steps of an example: K entropy thresholds choose the same mode until
the first step whose entropy falls between two of them, and a token step feeds the same sampled token
whichever setting took it. So the engine decodes one row per *distinct* trajectory. A row carries the
set of settings (arms) that still agree; at every step each arm's gate decides for the row, and the
row forks where the arms would feed different inputs: a different mode, a different latent mode, a
different marker or a different marker blend. A fork copies everything a row owns — its KV-cache
rows, its RNG state (the child continues the very stream it would have had alone), its gate states,
its history — so every arm's trace is the trace that decoding it alone gives.

Memory is bounded by ``max_rows``: a fork that finds no room *spills* its arms, which the caller decodes
again from the prompt (same seeds, so the same records; ``executors.Worker`` does it within the work unit);
nothing waits mid-sequence.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from latentcot.gates import Gate
from latentcot.latent import LatentMode
from latentcot.types import EmbeddingTable, StepView


@dataclass(frozen=True)
class Arm:
    """One setting in a tree: its gate and latent mode. ``latent_key`` identifies the latent mode (e.g.
    its LatentConfig): arms with equal keys feed equal vectors, so they can share latent steps."""

    gate: Gate
    latent: LatentMode
    latent_key: Hashable = None


class Choice(NamedTuple):
    """One arm's decision for every row (B,), or every arm's (K, B) once stacked."""

    is_latent: torch.Tensor  # bool
    is_marker: torch.Tensor  # bool
    fed: torch.Tensor  # long, the token fed on a token or marker step
    after_begin: torch.Tensor  # bool, this step feeds the begin marker
    after_end: torch.Tensor  # bool, this step feeds the end marker


@dataclass
class Tree:
    """Which arms each live row carries, and which prompt it decodes."""

    carried: torch.Tensor  # (K, B) bool, arm k still follows row b
    prompt: torch.Tensor  # (B,) long, the prompt (input row) each row decodes
    spilled: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)  # (prompt, arms) to decode again

    @classmethod
    def start(cls, batch: int, arms: int, device) -> Tree:
        return cls(torch.ones(arms, batch, dtype=torch.bool, device=device), torch.arange(batch, device=device))

    @property
    def lead(self) -> torch.Tensor:
        """(B,) long, the first arm each row carries: it speaks for the row (all its arms agree)."""
        return self.carried.long().argmax(0)

    def select(self, index: torch.Tensor) -> None:
        """Keep the rows ``index`` (finished rows leave the batch)."""
        self.carried, self.prompt = self.carried[:, index], self.prompt[index]

    def split(self, keys: torch.Tensor, active: torch.Tensor, max_rows: int | None) -> torch.Tensor | None:
        """Fork rows whose arms disagree. ``keys`` (K, B, C) describe the input each arm would feed (equal
        keys = equal inputs). Returns the parent (B',) of every new row, or None when no row forks.
        Children sit right after their parent; the parent keeps the group of its lead arm."""
        lead_keys = keys.gather(0, self.lead[None, :, None].expand(1, *keys.shape[1:]))  # (1, B, C)
        differs = (keys != lead_keys).any(-1) & self.carried  # (K, B)
        forking = differs.any(0) & active  # (B,)
        if not bool(forking.any()):
            return None
        key_rows = keys.permute(1, 0, 2).tolist()  # (B, K, C)
        carried_rows, prompts = self.carried.T.tolist(), self.prompt.tolist()
        room = float("inf") if max_rows is None else max_rows - len(prompts)
        parent: list[int] = []
        groups: list[list[int]] = []
        for row, forks in enumerate(forking.tolist()):
            arms = [k for k, on in enumerate(carried_rows[row]) if on]
            if not forks:
                parent.append(row)
                groups.append(arms)
                continue
            by_key: dict[tuple, list[int]] = {}
            for k in arms:
                by_key.setdefault(tuple(key_rows[row][k]), []).append(k)
            first, *others = by_key.values()
            parent.append(row)
            groups.append(first)
            for group in others:
                if room > 0:
                    parent.append(row)
                    groups.append(group)
                    room -= 1
                else:
                    self.spilled.append((prompts[row], tuple(group)))
        carried = torch.zeros(self.carried.shape[0], len(parent), dtype=torch.bool)
        for row, group in enumerate(groups):
            carried[group, row] = True
        index = torch.tensor(parent, device=self.prompt.device)
        self.carried, self.prompt = carried.to(self.carried.device), self.prompt[index]
        return index


def latent_ids_of(arms: Sequence[Arm]) -> list[int]:
    """Per arm, the index of the first arm with the same latent mode (same key, or the same object)."""
    ids = []
    for k, arm in enumerate(arms):
        same = (j for j, other in enumerate(arms[:k]) if other.latent is arm.latent or (
            arm.latent_key is not None and other.latent_key == arm.latent_key))  # fmt: skip
        ids.append(next(same, k))
    return ids


def idle_choice(sampled: torch.Tensor) -> Choice:
    """The decision of an arm no row carries any more: never looked at."""
    false = torch.zeros_like(sampled, dtype=torch.bool)
    return Choice(false, false, sampled, false, false)


def marker_blend(state, sampled: torch.Tensor) -> torch.Tensor:
    """(B, 2) fp32 marker blend a gate asks for (SwiReasoning's switches), zeros for other gates."""
    weight = getattr(state, "marker_weight", None)
    return weight.float() if weight is not None else torch.zeros(sampled.shape[0], 2, device=sampled.device)


def input_keys(choice: Choice, latent_ids: torch.Tensor, blends: torch.Tensor | None) -> torch.Tensor:
    """(K, B, C) fp32 naming the input each arm would feed each row: the token id, or -1 - its latent mode's
    id (ids below 2**24 are exact in fp32), and the marker blend if any. Equal keys, equal inputs."""
    latent = -1 - latent_ids[:, None].expand_as(choice.fed)
    code = torch.where(choice.is_latent, latent, choice.fed).float()[..., None]  # (K, B, 1)
    return code if blends is None else torch.cat([code, blends.float()], -1)


def latent_inputs(arms: Sequence[Arm], row_latent: torch.Tensor, view: StepView, table: EmbeddingTable):
    """(B, D) each row's latent vector, from the latent mode of the arm that speaks for it."""
    distinct = row_latent.unique().tolist()
    vector = arms[distinct[0]].latent(view, table)
    for k in distinct[1:]:
        vector = torch.where((row_latent == k)[:, None], arms[k].latent(view, table), vector)
    return vector


def copy_generators(generators: Sequence[torch.Generator], parent: Sequence[int]) -> list[torch.Generator]:
    """The generators of the new rows: a parent's first row keeps its generator, every other child gets
    a copy of its state (same seed, same position in the stream)."""
    taken: set[int] = set()
    out = []
    for row in parent:
        source = generators[row]
        if row in taken:
            clone = torch.Generator(device=source.device)
            clone.set_state(source.get_state())
            out.append(clone)
        else:
            taken.add(row)
            out.append(source)
    return out


def select_state(state: Any, index: torch.Tensor) -> Any:
    """A gate's per-row state for the new rows (None for stateless gates)."""
    return None if state is None else state.select(index)
