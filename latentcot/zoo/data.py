"""What a training run is: its settings (:class:`TrainConfig`) and its sequences per method and
curriculum stage.

Every sequence is split in two parts that meet at the latent segment (empty for cot/nocot):

    prefix  = prompt [+ <bot>]                      left-padded, no loss
    latents = n_latent continuous thoughts           (coconut only; filled in by the forward)
    suffix  = [<eot>] + completion + <eos>           right-padded, loss on completion + <eos>

Completions: ``cot`` writes every gold step on its own line, then ``Answer: X``; ``nocot``
writes only ``Answer: X``; ``coconut`` at stage s replaces the first s steps by s·c latent
positions (at the last stage, ``max_stage``, all steps are replaced). This is the layout the
engine decodes with ``--gate fixed --k s·c --latent hidden --markers "<bot>,<eot>"``: the begin
marker is fed, each latent is the final hidden state of the previous position, then the end
marker, then tokens.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from latentcot.types import Example
from latentcot.zoo.settings import ANSWER_PREFIX, MARKERS, METHODS, Layout, TrainConfig  # noqa: F401  (re-exported)

PROMPT_FILE = "prompt.json"
# Zero-shot: a trained model needs no instructions, only the question and the answer format.
PROMPT = {
    "description": "Zero-shot prompt of a latentcot zoo model: the question, then the solution.",
    "template": "{question}\n",
    "answer_prefix": ANSWER_PREFIX,
    "answer_format": f"{ANSWER_PREFIX} <answer>",
    "stop": ["\n\n"],
}


def write_prompt_file(directory: Path) -> Path:
    path = Path(directory) / PROMPT_FILE
    path.write_text(json.dumps(PROMPT, indent=2) + "\n", encoding="utf-8")
    return path


@dataclass
class Batch:
    """Token ids of one training batch; the latent segment lies between prefix and suffix."""

    prefix_ids: torch.Tensor  # (B, P) long, left-padded prompt [+ <bot>]
    prefix_mask: torch.Tensor  # (B, P) long, 0 = padding
    n_latent: int  # latent positions after the prefix, the same for every row
    suffix_ids: torch.Tensor  # (B, S) long, right-padded [<eot>] + completion + <eos>
    suffix_mask: torch.Tensor  # (B, S) long, 0 = padding
    loss_mask: torch.Tensor  # (B, S) bool, True where the token is a training target

    def to(self, device) -> Batch:
        return Batch(
            self.prefix_ids.to(device),
            self.prefix_mask.to(device),
            self.n_latent,
            self.suffix_ids.to(device),
            self.suffix_mask.to(device),
            self.loss_mask.to(device),
        )


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _pad(rows: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def encode(tokenizer, prompts: Sequence[str], examples: Sequence[Example], layout: Layout) -> Batch:
    """One batch of ``examples`` (with their rendered ``prompts``) in ``layout``."""
    begin, end = (tokenizer.convert_tokens_to_ids(m) for m in MARKERS)
    prefixes, suffixes, targets = [], [], []
    for prompt, example in zip(prompts, examples, strict=True):
        completion = _ids(tokenizer, layout.completion(example)) + [tokenizer.eos_token_id]
        prefixes.append(_ids(tokenizer, prompt) + ([begin] if layout.markers else []))
        suffixes.append(([end] if layout.markers else []) + completion)
        targets.append([False] * int(layout.markers) + [True] * len(completion))
    prefix_ids, prefix_mask = _pad(prefixes, tokenizer.pad_token_id, left=True)
    suffix_ids, suffix_mask = _pad(suffixes, tokenizer.pad_token_id, left=False)
    loss_mask = torch.zeros_like(suffix_mask, dtype=torch.bool)
    for i, row in enumerate(targets):
        loss_mask[i, : len(row)] = torch.tensor(row)
    return Batch(prefix_ids, prefix_mask, layout.n_latent, suffix_ids, suffix_mask, loss_mask)
