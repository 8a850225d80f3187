"""Tiny tokenizers and random-init causal LMs of several architectures, built in-process.

They need no download, so tests, benchmarks and training start from them. A model built here
is an ordinary HF ``PreTrainedModel``: ``save_pretrained`` it and any HF tool can load it.
"""

from __future__ import annotations

import string

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from latentcot.zoo.settings import ARCHITECTURES, parse_arch_spec
from latentcot.zoo.settings import MARKERS as THOUGHT_MARKERS

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")
DEFAULT_ALPHABET = string.ascii_letters + string.digits + string.punctuation + " \n"
# Word pieces: a run of letters or one other character, each with the space before it if any, or
# one whitespace character. Every character of a text falls in exactly one piece.
WORD_PIECE = r" ?[A-Za-z]+| ?[^A-Za-z\s]|\s"
# Test-only architectures: the trainable ones plus families with their own input-embedding quirks
# (Gemma scales token embeddings by sqrt(hidden) inside the embedding module) and attention
# variants (Qwen3's q/k norms, Mistral). HF model types; not offered by `latentcot train`.
TEST_ARCHITECTURES = (*ARCHITECTURES, "qwen3", "mistral", "gemma", "gemma2", "gemma3_text")


def char_tokenizer(
    alphabet: str = DEFAULT_ALPHABET, extra_special: tuple[str, ...] = THOUGHT_MARKERS
) -> PreTrainedTokenizerFast:
    """One token per character of ``alphabet``, plus special tokens; decodes without separators."""
    specials = [*SPECIAL_TOKENS, *extra_special]
    chars = sorted(set(alphabet) - set(specials))
    vocab = {token: i for i, token in enumerate([*specials, *chars])}
    # BPE without merges splits text into single characters from the vocabulary.
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    return _fast(backend, extra_special)


def word_tokenizer(pieces, extra_special: tuple[str, ...] = THOUGHT_MARKERS) -> PreTrainedTokenizerFast:
    """One token per word piece (see ``WORD_PIECE``) in ``pieces``, plus special tokens; anything else
    is ``<unk>``. Copying a made-up word is then one token, not a character-by-character task."""
    specials = [*SPECIAL_TOKENS, *extra_special]
    vocab = {token: i for i, token in enumerate([*specials, *sorted(set(pieces) - set(specials))])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(WORD_PIECE), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return _fast(backend, extra_special)


def _fast(backend: Tokenizer, extra_special: tuple[str, ...]) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        additional_special_tokens=list(extra_special),
    )


def tiny_config(
    arch: str,
    vocab_size: int,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 2,
    positions: int = 512,
    init_std: float = 0.02,
    pad_id: int = 0,
    bos_id: int = 2,
    eos_id: int = 3,
):
    """An HF config of ``arch`` at toy size. head_dim = hidden / heads (vLLM's CPU backend needs >= 32).

    ``arch`` may also be a looped spec, ``looped:k=2,L=4[,prelude=1,coda=1,inject=add,random=1,cos=0.1,pos=learned]``
    (see latentcot.zoo.looped); ``layers`` is then ignored: the spec gives the depth."""
    ids = dict(
        vocab_size=vocab_size,
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        initializer_range=init_std,
        tie_word_embeddings=False,
    )
    if arch.partition(":")[0] == "looped":
        from latentcot.zoo.looped import LoopedConfig

        return LoopedConfig(
            hidden_size=hidden,
            intermediate_size=4 * hidden,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=positions,
            **ids,
            **parse_arch_spec(arch),
        )
    if arch not in TEST_ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; valid: {', '.join(TEST_ARCHITECTURES)}")
    if arch == "gpt2":
        return AutoConfig.for_model("gpt2", n_embd=hidden, n_layer=layers, n_head=heads, n_positions=positions, **ids)
    # Qwen3 and Gemma default to head_dim 128/256 whatever the width; pin it to hidden / heads (32 at the
    # default size), which keeps Gemma tiny. Other families derive it from hidden / heads already.
    head_dim = {"head_dim": hidden // heads} if arch in ("qwen3", "gemma", "gemma2", "gemma3_text") else {}
    return AutoConfig.for_model(
        arch,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=positions,
        **head_dim,
        **ids,
    )


def tiny_model(
    arch: str, tokenizer: PreTrainedTokenizerFast, *, seed: int = 0, vocab_size: int | None = None, **config_kwargs
) -> PreTrainedModel:
    """A random-init causal LM of ``arch`` for ``tokenizer``, deterministic in ``seed``.

    ``vocab_size`` larger than the tokenizer's gives a model with a realistic output layer
    (e.g. 151936 rows, as Qwen2) whose extra tokens decode to nothing."""
    config = tiny_config(
        arch,
        vocab_size or len(tokenizer),
        pad_id=tokenizer.pad_token_id,
        bos_id=tokenizer.bos_token_id,
        eos_id=tokenizer.eos_token_id,
        **config_kwargs,
    )
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()
