"""Load any HF causal LM (hub id, local directory, or ``builtin:NAME``) with its tokenizer.

What ``latentcot run``/``sweep`` load goes through here (the zoo's trainer saves its own small models,
and the report reads a run's tokenizer). Every failure a user can cause (missing
directory, not a causal LM, no tokenizer, unknown hub id) becomes one-line ``InputError``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from latentcot.config import ModelConfig
from latentcot.errors import InputError
from latentcot.zoo import looped as _looped  # noqa: F401  registers the looped model type with the Auto classes
from latentcot.zoo import registry as zoo_registry

# Types that AutoModelForCausalLM accepts but whose checkpoints are bidirectional encoders.
ENCODER_ONLY = frozenset(
    {
        "bert",
        "roberta",
        "xlm-roberta",
        "camembert",
        "electra",
        "ernie",
        "rembert",
        "roc_bert",
        "megatron-bert",
        "data2vec-text",
        "xmod",
        "bert-generation",
    }
)


@dataclass(frozen=True)
class LoadedModel:
    model: PreTrainedModel
    tokenizer: Any  # a PreTrainedTokenizerBase, left padding, pad token set
    identity: dict[str, Any]  # what the run manifest records about the model


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~")) or spec.endswith("/") or Path(spec).exists()


def resolve_source(spec: str) -> tuple[str, bool]:
    """(what to pass to from_pretrained, is it a local directory)."""
    builtin = zoo_registry.builtin_path(spec)
    if builtin is not None:
        return str(builtin), True
    if _looks_like_path(spec):
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise InputError(f"model directory {spec} does not exist")
        if not (path / "config.json").is_file():
            raise InputError(f"{spec} is not a saved model directory (no config.json)")
        return str(path), True
    return spec, False


def _torch_dtype(name: str):
    if name == "auto":
        return "auto"
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}[
        name
    ]


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name} was asked for but no CUDA device is available")
    return name


def _config_hash(source: str, is_local: bool, config) -> str:
    """Hash of the checkpoint's config: the file when local, else the config's JSON."""
    text = (Path(source) / "config.json").read_text() if is_local else json.dumps(config.to_dict(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
    "tekken.json",
)


def load_tokenizer(source: str, cfg: ModelConfig):
    local = Path(source)
    if local.is_dir() and not any((local / name).is_file() for name in TOKENIZER_FILES):
        raise InputError(
            f"cannot load a tokenizer from {source}: no tokenizer files there "
            "(save one with tokenizer.save_pretrained or pass --tokenizer)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"cannot load a tokenizer from {source}: {exc}") from None
    if len(tokenizer) < 2:  # transformers can build an empty tokenizer from a config alone
        raise InputError(f"cannot load a tokenizer from {source}: it has an empty vocabulary")
    if tokenizer.pad_token is None:  # padding is on the left and masked, so any known token will do
        fallback = tokenizer.eos_token or tokenizer.bos_token or tokenizer.unk_token
        if fallback is None:
            raise InputError(f"the tokenizer of {source} has no pad, eos, bos or unk token to pad with")
        tokenizer.pad_token = fallback
    tokenizer.padding_side = "left"
    return tokenizer


def check_causal(cfg: ModelConfig) -> tuple[str, bool, Any]:
    """(source, is it local, its HF config) of a causal LM; InputError for anything else."""
    source, is_local = resolve_source(cfg.model)
    try:
        config = AutoConfig.from_pretrained(source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load model {cfg.model!r}: {exc}") from None
    has_remote_causal = "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {})
    registered = type(config) in MODEL_FOR_CAUSAL_LM_MAPPING  # e.g. the zoo's looped model
    causal = config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or has_remote_causal or registered
    if config.model_type in ENCODER_ONLY and not getattr(config, "is_decoder", False):
        causal = False  # a masked-LM checkpoint: loading it as causal would give nonsense
    if not causal or getattr(config, "is_encoder_decoder", False):
        raise InputError(f"model {cfg.model!r} ({config.model_type}) is not a causal language model")
    return source, is_local, config


def model_tokenizer(cfg: ModelConfig, source: str):
    """The tokenizer of ``cfg`` (its own, or --tokenizer), left padding, pad token set."""
    tokenizer_source, _ = resolve_source(cfg.tokenizer) if cfg.tokenizer else (source, True)
    return load_tokenizer(tokenizer_source, cfg)


def config_identity(cfg: ModelConfig, source: str, is_local: bool, config) -> dict[str, Any]:
    """What a run manifest records about a model before any weights are loaded."""
    return {
        "model": cfg.model,
        "source": source,
        "model_type": config.model_type,
        "config_sha256": _config_hash(source, is_local, config),
    }


def load_model(cfg: ModelConfig) -> LoadedModel:
    source, is_local, config = check_causal(cfg)
    tokenizer = model_tokenizer(cfg, source)
    device = _device(cfg.device)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source,
            revision=cfg.revision,
            trust_remote_code=cfg.trust_remote_code,
            dtype=_torch_dtype(cfg.dtype),
        )
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load model {cfg.model!r}: {exc}") from None
    if device == "cpu" and model.dtype == torch.float16:
        model = model.float()  # fp16 matmuls are slow or missing on CPU
    model = model.to(device).eval()
    if cfg.repeat_layers is not None:
        from latentcot.repeat import repeat_layers

        repeat_layers(model, *cfg.repeat_layers)
    identity = {
        **config_identity(cfg, source, is_local, config),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": model.get_output_embeddings().weight.shape[0],  # V of normalized entropy (H / log V)
        "dtype": str(model.dtype).removeprefix("torch."),
        "device": str(model.device),
        **({"repeat_layers": list(cfg.repeat_layers)} if cfg.repeat_layers is not None else {}),
    }
    return LoadedModel(model=model, tokenizer=tokenizer, identity=identity)
