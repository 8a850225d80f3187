"""Decoding helpers every backend shares: completion text, stop strings, EOS ids, context room.

Both the in-process engine (``latentcot.engine``) and the vLLM backend (``latentcot.backends.vllm``)
build their ``Trace``s with these, so a record means the same thing whichever backend wrote it.
"""

from __future__ import annotations

from typing import Any

from latentcot.errors import InputError
from latentcot.types import LATENT, LATENT_TEXT

CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def render_completion(
    tokenizer, modes: list[str], token_ids: list[int], drop_last: bool, emitted: list[bool] | None = None
) -> str:
    """Completion text: runs of fed tokens decoded together, each latent step as LATENT_TEXT.
    ``drop_last``: the last step is the EOS token, which ends the text rather than belonging to it.
    ``emitted``: per step, a latent step whose method also emitted its token (shown as that token's text,
    as those methods' own outputs do)."""
    emitted = emitted or [False] * len(modes)
    if drop_last:
        modes, token_ids, emitted = modes[:-1], token_ids[:-1], emitted[:-1]
    parts, run = [], []
    for mode, token, shown in zip(modes, token_ids, emitted):
        if mode == LATENT and not shown:
            if run:
                parts.append(tokenizer.decode(run))
                run = []
            parts.append(LATENT_TEXT)
        else:
            run.append(token)
    if run:
        parts.append(tokenizer.decode(run))
    return "".join(parts)


def stop_hit(tokenizer, stop: tuple[str, ...], recent: list[int], token: int) -> bool:
    """Append ``token`` to a row's recent token ids (trimmed in place) and say whether their text
    now contains a stop string. The caller clears ``recent`` on a latent step: a latent breaks the text."""
    window = max(len(s) for s in stop) + 1  # a stop string spans at most this many tokens
    recent.append(token)
    del recent[:-window]
    text = tokenizer.decode(recent)
    return any(s in text for s in stop)


def eos_token_ids(tokenizer, generation_eos: Any) -> list[int]:
    """Sorted ids that end a row: the tokenizer's EOS and the generation config's (an id or a list)."""
    extra = (
        []
        if generation_eos is None
        else generation_eos
        if isinstance(generation_eos, (list, tuple))
        else [generation_eos]
    )
    return sorted({tokenizer.eos_token_id, *extra} - {None})


def context_length(config) -> int | None:
    """Positions a model can attend over, from whichever field its config uses; None when unknown."""
    for name in CONTEXT_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_room(
    length: int, max_new_tokens: int, context: int | None, what: str = "model's", where: str | None = None
) -> None:
    """Refuse a prompt of ``length`` tokens that leaves no room for ``max_new_tokens`` in ``context``."""
    if context is not None and length + max_new_tokens > context:
        raise InputError(
            f"prompt of {length} tokens + max_new_tokens {max_new_tokens} exceeds the {what} context "
            f"of {context} positions",
            where=where,
        )


def check_prompts_room(
    tokenizer, prompts, max_new_tokens: int, names, context: int | None, what: str = "model's"
) -> None:
    """Raise InputError naming the first prompt that leaves no room for ``max_new_tokens``."""
    if context is None:
        return
    for name, ids in zip(names, tokenizer(list(prompts))["input_ids"]):
        check_room(len(ids), max_new_tokens, context, what, where=name)


def single_tokens(tokenizer, texts) -> bool:
    """Whether every one of ``texts`` is a single token of ``tokenizer`` (not the unknown token)."""
    ids = [tokenizer.convert_tokens_to_ids(text) for text in texts]
    return all(isinstance(i, int) and i != tokenizer.unk_token_id for i in ids)
