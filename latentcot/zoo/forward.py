"""The training forward: token positions in parallel, latent positions one at a time.

A latent position's input embedding is the model's own final (post-norm) hidden state at the
previous position, exactly what the decoding engine feeds with ``--latent hidden``. Each latent
therefore needs the one before it: the prefix is run once into a KV cache, then one cached
forward per latent, then the suffix in one cached forward. Gradients flow through every latent
into the positions it came from (back-propagation through the continuous thought).

Soft inputs (``--method soft``): a first pass without gradients reads the model's own next-token
distribution p at every completion position; where its entropy is above the threshold, the
position's input becomes p's mixture of input embeddings (Σ_v p_v e_v, what the engine feeds with
``--latent soft``) instead of the gold token, and the second pass trains on that. So the model
learns to continue from the very inputs an entropy-gated soft decoding gives it at its uncertain
steps, while every target stays the gold chain.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from latentcot.looping import entropy_of
from latentcot.zoo.data import Batch


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) position ids counting only real tokens, as HF and the engine do for left padding."""
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)


def _final_hidden(model, aux: list | None = None, **inputs) -> torch.Tensor:
    """(B, T, D) final post-norm hidden states: the input of the LM head. A model's extra training
    term (a looped model's ``regularizer``) is appended to ``aux``."""
    out = model.base_model(**inputs)
    if aux is not None and getattr(out, "regularizer", None) is not None:
        aux.append(out.regularizer)
    return out.last_hidden_state


def soft_inputs(model, batch: Batch, threshold: float, **model_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """((B, P + S, D) input embeddings, (B, S) bool: which suffix positions were made soft). A target
    position whose predicted distribution has entropy > ``threshold`` nats gets Σ_v p_v e_v."""
    ids = torch.cat([batch.prefix_ids, batch.suffix_ids], dim=1)  # (B, P + S)
    mask = torch.cat([batch.prefix_mask, batch.suffix_mask], dim=1)  # (B, P + S)
    prefix_width = batch.prefix_ids.shape[1]
    table = model.get_input_embeddings()
    with torch.no_grad():  # the decisions and the mixture weights are the model's, not trained through
        hidden = _final_hidden(
            model, None, input_ids=ids, attention_mask=mask, position_ids=_positions(mask), **model_kwargs
        )
        logits = model.get_output_embeddings()(hidden[:, prefix_width - 1 : -1])  # (B, S, V)
        logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)
        entropy = entropy_of(logp)  # (B, S)
        soft = batch.loss_mask & (entropy > threshold)  # (B, S)
    embeds = table(ids)  # (B, P + S, D)
    mixed = logp.exp().to(embeds.dtype) @ table.weight  # (B, S, D); gradients reach the embedding table
    suffix = torch.where(soft[..., None], mixed, embeds[:, prefix_width:])
    return torch.cat([embeds[:, :prefix_width], suffix], dim=1), soft


def predicting_hidden(
    model, batch: Batch, aux: list | None = None, soft_above: float | None = None, **model_kwargs
) -> torch.Tensor:
    """(B, S, D): for each suffix token, the hidden state of the position that predicts it.
    ``soft_above``: soft inputs where the entropy exceeds it (see :func:`soft_inputs`; no latents).
    ``model_kwargs`` go to every forward (e.g. a looped model's ``looping``)."""
    run = functools.partial(_final_hidden, model, aux, **model_kwargs)
    prefix_width = batch.prefix_ids.shape[1]
    if batch.n_latent == 0:  # no latents: one ordinary forward over prefix + suffix
        ids = torch.cat([batch.prefix_ids, batch.suffix_ids], dim=1)  # (B, P + S)
        mask = torch.cat([batch.prefix_mask, batch.suffix_mask], dim=1)  # (B, P + S)
        if soft_above is None:
            inputs = {"input_ids": ids}
        else:
            inputs = {"inputs_embeds": soft_inputs(model, batch, soft_above, **model_kwargs)[0]}
        hidden = run(**inputs, attention_mask=mask, position_ids=_positions(mask))
        return hidden[:, prefix_width - 1 : -1]  # (B, S, D)
    if soft_above is not None:
        raise ValueError("soft inputs and latent positions do not combine")

    cache = DynamicCache(config=model.config)
    mask, positions = batch.prefix_mask, _positions(batch.prefix_mask)
    hidden = run(
        input_ids=batch.prefix_ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True
    )
    last = hidden[:, -1:]  # (B, 1, D) at <bot>
    next_position = positions[:, -1:] + 1  # (B, 1)
    ones = torch.ones_like(mask[:, :1])
    for _ in range(batch.n_latent):  # latent i is fed the hidden state of the position before it
        mask = torch.cat([mask, ones], dim=1)
        last = run(
            inputs_embeds=last, attention_mask=mask, position_ids=next_position, past_key_values=cache, use_cache=True
        )  # (B, 1, D)
        next_position = next_position + 1
    suffix_width = batch.suffix_ids.shape[1]
    mask = torch.cat([mask, batch.suffix_mask], dim=1)
    suffix_positions = next_position + torch.arange(suffix_width, device=mask.device)  # (B, S)
    hidden = run(
        input_ids=batch.suffix_ids,
        attention_mask=mask,
        position_ids=suffix_positions,
        past_key_values=cache,
        use_cache=True,
    )
    return torch.cat([last, hidden[:, :-1]], dim=1)  # (B, S, D)


def loss_of(model, batch: Batch, soft_above: float | None = None, **model_kwargs) -> torch.Tensor:
    """Mean cross-entropy over the batch's target tokens, plus the mean of the model's extra
    training terms if it reports any (a scalar with gradients)."""
    aux: list = []
    hidden = predicting_hidden(model, batch, aux, soft_above, **model_kwargs)  # (B, S, D)
    logits = model.get_output_embeddings()(hidden).float()  # (B, S, V)
    loss = F.cross_entropy(logits[batch.loss_mask], batch.suffix_ids[batch.loss_mask])
    return loss + torch.stack(aux).mean() if aux else loss
