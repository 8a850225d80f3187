"""Frozen, validated settings. Every field is checked when the object is built; unknown keys are errors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from latentcot.looping import LoopConfig
from latentcot.validation import from_mapping, is_int, is_number, require, require_choice

GATES = ("token", "latent", "entropy", "fixed", "think-router", "swir", "cold-stop")
DIRECTIONS = ("above", "below")
UNITS = ("nats", "bits", "normalized")
# the latents under study, then the ablations (content removed; see latentcot.latent)
LATENT_MODES = (
    *("hidden", "hidden-normed", "soft", "topk-soft"),
    *("zero", "mean-embedding", "shuffled", "noise"),  # ablations: does the latent's content matter?
    *("moi", "random-soft", "multiplex"),  # the published mixtures (see latentcot.methods)
)
MERGES = ("mean", "weighted")
DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")  # float64: comparisons to the last bit
BACKENDS = ("hf", "vllm")


@dataclass(frozen=True)
class ModelConfig:
    model: str  # HF hub id, local save_pretrained dir, or builtin:NAME
    tokenizer: str | None = None  # defaults to the model's own
    dtype: str = "auto"  # auto = the checkpoint's dtype (fp32 on CPU for half checkpoints)
    device: str = "auto"  # auto = cuda when available, else cpu
    trust_remote_code: bool = False  # run code shipped with a checkpoint only when asked to
    revision: str | None = None  # hub revision (branch, tag or commit)
    repeat_layers: tuple[int, int, int] | None = None  # experimental: (start, end, r), layers [start, end) r times

    def __post_init__(self):
        require(bool(self.model.strip()), "model must not be empty")
        if self.repeat_layers is not None:
            require(
                len(self.repeat_layers) == 3
                and all(isinstance(i, int) for i in self.repeat_layers)
                and self.repeat_layers[2] >= 1,
                f"repeat_layers must be (start, end, repeats >= 1), got {self.repeat_layers!r}",
            )
            object.__setattr__(self, "repeat_layers", tuple(self.repeat_layers))
        require_choice(self.dtype, DTYPES, "dtype")
        require(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            f"unknown device {self.device!r}; valid: auto, cpu, cuda, cuda:N",
        )


@dataclass(frozen=True)
class BackendConfig:
    """Which engine decodes, and the vLLM engine's own settings (they never change a record's setting)."""

    name: str = "hf"  # hf (in-process transformers engine) | vllm
    tensor_parallel_size: int = 1  # vllm: GPUs the model is split over
    max_model_len: int | None = None  # vllm: context length (default: the model's)
    gpu_memory_utilization: float | None = None  # vllm: fraction of accelerator memory it may take
    kv_cache_gib: float | None = None  # vllm: KV-cache size in GiB (overrides the fraction)
    enforce_eager: bool = False  # vllm: no graph capture or compilation (fast start)

    def __post_init__(self):
        require_choice(self.name, BACKENDS, "backend")
        require(
            isinstance(self.tensor_parallel_size, int) and self.tensor_parallel_size >= 1,
            f"tensor parallel size must be an integer >= 1, got {self.tensor_parallel_size!r}",
        )
        require(
            self.max_model_len is None or (isinstance(self.max_model_len, int) and self.max_model_len >= 1),
            f"max model length must be an integer >= 1, got {self.max_model_len!r}",
        )
        require(
            self.gpu_memory_utilization is None or 0 < self.gpu_memory_utilization <= 1,
            f"gpu memory utilization must be in (0, 1], got {self.gpu_memory_utilization!r}",
        )
        require(
            self.kv_cache_gib is None or (math.isfinite(self.kv_cache_gib) and self.kv_cache_gib > 0),
            f"kv cache size must be > 0 GiB, got {self.kv_cache_gib!r}",
        )
        if self.name != "vllm":
            given = [
                name
                for name, default in (
                    ("tensor_parallel_size", 1),
                    ("max_model_len", None),
                    ("gpu_memory_utilization", None),
                    ("kv_cache_gib", None),
                    ("enforce_eager", False),
                )
                if getattr(self, name) != default
            ]
            require(not given, f"--{given[0].replace('_', '-') if given else ''} only applies to --backend vllm")


@dataclass(frozen=True)
class DecodeConfig:
    max_new_tokens: int = 128  # generated positions per row: tokens, latents and markers alike
    temperature: float = 0.0  # 0 = greedy (argmax); > 0 = sample from softmax(logits / T)
    top_p: float = 1.0  # nucleus sampling mass (1 = off)
    top_k: int = 0  # keep the k most likely tokens (0 = off)
    stop: tuple[str, ...] = ()  # a row finishes once its token text contains one of these
    markers: tuple[str, str] | None = None  # (begin, end) thought tokens fed around latent segments
    ignore_eos: bool = False  # keep generating past EOS (fixed-length benchmarks)
    loop: LoopConfig | None = None  # looped models: loops per token and adaptive exit (None = as trained)

    def __post_init__(self):
        require(
            isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1,
            f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}",
        )
        require(
            math.isfinite(self.temperature) and self.temperature >= 0,
            f"temperature must be >= 0, got {self.temperature!r}",
        )
        require(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p!r}")
        require(isinstance(self.top_k, int) and self.top_k >= 0, f"top_k must be >= 0, got {self.top_k!r}")
        require(all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings")
        require(
            self.markers is None or (len(self.markers) == 2 and all(self.markers)),
            "markers must be two non-empty token strings (begin, end)",
        )
        object.__setattr__(self, "stop", tuple(self.stop))
        if isinstance(self.loop, Mapping):
            object.__setattr__(self, "loop", from_mapping(LoopConfig, self.loop))
        require(self.loop is None or isinstance(self.loop, LoopConfig), "loop must be a LoopConfig")
        if self.markers is not None:
            object.__setattr__(self, "markers", tuple(self.markers))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


# Parameters of the newer gates: in a record's setting only where they apply (settings written before them
# keep their exact form, and resume).
GATE_EXTRAS = (
    "direction",
    "window",
    "max_switches",
    "alpha0",
    "beta0",
    "cold_stop_entropy",
    "cold_stop_steps",
    "cold_stop_temperature",
)


@dataclass(frozen=True)
class GateConfig:
    kind: str = "token"  # token | latent | entropy | fixed
    threshold: float | None = None  # entropy gate: latent when H > threshold (in `unit`)
    unit: str = "nats"  # nats | bits | normalized (H / log V)
    max_consecutive: int | None = None  # entropy gate: at most this many latent steps in a row
    max_latent: int | None = None  # entropy gate: at most this many latent steps per row
    k: int | None = None  # fixed gate: the first k steps are latent
    # entropy gate with a threshold per domain: ((domain, τ), ...), "*" = any other domain.
    # A record's `threshold` is then the τ of its example's domain (see `for_domain`).
    threshold_map: tuple[tuple[str, float], ...] | None = None
    direction: str | None = None  # entropy gate: above (latent when H > τ, the default) | below (H < τ)
    window: int | None = None  # swir: steps a token row stays before it may switch back (default 512)
    max_switches: int | None = None  # swir: latent -> token switches before a row stays in token mode
    alpha0: float | None = None  # swir: weight of the soft input at a switch to latent (rest: begin marker; 1.0)
    beta0: float | None = None  # swir: weight of the soft input at a switch to tokens (rest: end marker; 0.7)
    cold_stop_entropy: float | None = None  # cold-stop: tempered entropy bound (default 0.01)
    cold_stop_steps: int | None = None  # cold-stop: consecutive steps below it that end thinking (default 256)
    cold_stop_temperature: float | None = None  # cold-stop: temperature of that entropy (default 0.6)

    def __post_init__(self):
        require_choice(self.kind, GATES, "gate")
        require_choice(self.unit, UNITS, "unit")
        self._resolve_defaults()
        if self.threshold_map is not None:
            require(self.kind == "entropy", "a threshold map only applies to the entropy gate")
            pairs = dict(self.threshold_map.items() if isinstance(self.threshold_map, Mapping) else self.threshold_map)
            require(bool(pairs), "the threshold map is empty")
            for domain, tau in pairs.items():
                require(_is_threshold(tau), f"threshold for domain {domain!r} must be a number >= 0, got {tau!r}")
            object.__setattr__(self, "threshold_map", tuple(sorted((str(d), float(t)) for d, t in pairs.items())))
        if self.kind == "entropy":
            require(
                self.threshold is not None or self.threshold_map is not None,
                "the entropy gate needs a threshold (or a threshold map)",
            )
            require(
                self.threshold is None or _is_threshold(self.threshold),
                f"threshold must be a number >= 0, got {self.threshold!r}",
            )
            require_choice(self.direction, DIRECTIONS, "direction")
        elif self.kind == "think-router":
            require(
                is_number(self.threshold) and 0 <= self.threshold <= 1,
                f"the think-router gate needs a threshold on p_max in [0, 1], got {self.threshold!r}",
            )
        else:
            require(
                self.threshold is None,
                f"threshold only applies to the entropy and think-router gates, not {self.kind!r}",
            )
        for name in ("max_consecutive", "max_latent"):
            value = getattr(self, name)
            require(value is None or (isinstance(value, int) and value >= 0), f"{name} must be an integer >= 0")
            require(value is None or self.kind == "entropy", f"{name} only applies to the entropy gate")
        if self.kind == "fixed":
            require(isinstance(self.k, int) and self.k >= 0, "the fixed gate needs k, an integer >= 0")
        else:
            require(self.k is None, f"k only applies to the fixed gate, not {self.kind!r}")

    def _resolve_defaults(self) -> None:
        """Fill in the published defaults of the kind's own parameters; refuse other kinds' parameters."""
        own = {
            "entropy": {"direction": "above"},
            "swir": {"window": 512, "alpha0": 1.0, "beta0": 0.7},
            "cold-stop": {"cold_stop_entropy": 0.01, "cold_stop_steps": 256, "cold_stop_temperature": 0.6},
        }.get(self.kind, {})
        for name in GATE_EXTRAS:
            value = getattr(self, name)
            allowed = name in own or (name == "max_switches" and self.kind == "swir")
            require(value is None or allowed, f"{name} does not apply to the {self.kind} gate")
            if value is None and name in own:
                object.__setattr__(self, name, own[name])
        for name in ("window", "max_switches", "cold_stop_steps"):
            value = getattr(self, name)
            require(value is None or (is_int(value) and value >= 0), f"{name} must be an integer >= 0, got {value!r}")
        for name in ("alpha0", "beta0"):
            value = getattr(self, name)
            require(value is None or (is_number(value) and 0 <= value <= 1), f"{name} must be in [0, 1], got {value!r}")
        for name in ("cold_stop_entropy", "cold_stop_temperature"):
            value = getattr(self, name)
            require(value is None or (is_number(value) and value > 0), f"{name} must be a number > 0, got {value!r}")

    def for_domain(self, domain: str) -> GateConfig:
        """This gate with a threshold map resolved to the threshold of ``domain``."""
        if self.threshold_map is None:
            return self
        taus = dict(self.threshold_map)
        require(
            domain in taus or "*" in taus,
            f'the threshold map has no entry for domain {domain!r} (it has {", ".join(taus)}; add it or a "*" default)',
        )
        return dataclasses.replace(self, threshold=taus.get(domain, taus.get("*")))


def _is_threshold(value: Any) -> bool:
    return is_number(value) and value >= 0


@dataclass(frozen=True)
class LatentConfig:
    kind: str = "hidden"  # one of LATENT_MODES
    temperature: float = 1.0  # soft modes: weights are softmax(logits / temperature); random-soft: Gumbel's
    top_k: int = 8  # topk-soft, moi: tokens mixed; multiplex: tokens sampled (the width K)
    min_p: float = 0.0  # topk-soft: drop tokens below min_p x the top probability (Soft Thinking)
    beta: float = 1.0  # moi: weight of the sampled token in the posterior mixture
    merge: str = "mean"  # multiplex: mean | weighted (by the sampled tokens' probabilities)
    emit: bool = False  # a latent step also emits its sampled token (MoI, SwiReasoning)

    def __post_init__(self):
        require_choice(self.kind, LATENT_MODES, "latent mode")
        require(
            is_number(self.temperature) and self.temperature > 0,
            f"latent temperature must be > 0, got {self.temperature!r}",
        )
        require(is_int(self.top_k) and self.top_k >= 1, f"latent top_k must be >= 1, got {self.top_k!r}")
        require(is_number(self.min_p) and 0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p!r}")
        require(is_number(self.beta) and self.beta >= 0, f"beta must be >= 0, got {self.beta!r}")
        require_choice(self.merge, MERGES, "multiplex merge")
        require(isinstance(self.emit, bool), "emit must be true or false")

    def extras(self) -> dict[str, Any]:
        """The fields that are not at their defaults (a record's setting lists them; older settings keep
        their exact form)."""
        defaults = LatentConfig()
        return {
            name: getattr(self, name)
            for name in ("min_p", "beta", "merge", "emit")
            if getattr(self, name) != getattr(defaults, name)
        }


@dataclass(frozen=True)
class ExecutorConfig:
    """Where a run's work units decode. Not part of a run's config: records do not depend on it."""

    kind: str = "local"  # local (this process) | ray (actors, each loading the model once)
    workers: int = 1  # ray: actors
    gpus_per_worker: float = 0.0  # ray: GPUs each actor reserves (0 on CPU; several for tensor parallelism)
    address: str | None = None  # ray: an existing cluster (e.g. ray://head:10001 or auto); None = start one

    def __post_init__(self):
        require_choice(self.kind, ("local", "ray"), "executor")
        require(is_int(self.workers) and self.workers >= 1, f"--workers must be >= 1, got {self.workers!r}")
        require(
            is_number(self.gpus_per_worker) and self.gpus_per_worker >= 0,
            f"--gpus-per-worker must be >= 0, got {self.gpus_per_worker!r}",
        )
        if self.kind == "local":
            require(
                self.workers == 1 and self.gpus_per_worker == 0 and self.address is None,
                "--workers, --gpus-per-worker and --ray-address need --executor ray",
            )

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def setting_of(gate: GateConfig, latent: LatentConfig, decode: DecodeConfig) -> dict[str, Any]:
    """The ``setting`` object of a record: everything that changes how a row is decoded."""
    return {
        "gate": gate.kind,
        "threshold": gate.threshold,
        "unit": gate.unit,
        "k": gate.k,
        "max_consecutive": gate.max_consecutive,
        "max_latent": gate.max_latent,
        "latent": latent.kind,
        "latent_temperature": latent.temperature,
        "latent_top_k": latent.top_k,
        "temperature": decode.temperature,
        "top_p": decode.top_p,
        "top_k": decode.top_k,
        "max_new_tokens": decode.max_new_tokens,
        "stop": list(decode.stop),
        "markers": list(decode.markers) if decode.markers else None,
        "threshold_map": dict(gate.threshold_map) if gate.threshold_map else None,
        **({"loop": decode.loop.as_dict()} if decode.loop is not None else {}),  # absent = as before
        **_gate_extras(gate),
        **{f"latent_{name}": value for name, value in latent.extras().items()},
    }


def _gate_extras(gate: GateConfig) -> dict[str, Any]:
    """The parameters of the newer gates, where they apply; ``direction`` only when not the default
    "above", so settings written before directions existed keep their exact form (and resume)."""
    extras = {name: getattr(gate, name) for name in GATE_EXTRAS if getattr(gate, name) is not None}
    if extras.get("direction") == "above":
        del extras["direction"]
    return extras


def _latent_tag(latent: LatentConfig) -> str:
    """The parameters of a mixing latent mode, for setting ids: ``lt0.6k10p0.001``, ``k20b1``, ``k3mean``."""
    if latent.kind == "moi":
        tag = f"k{latent.top_k}b{latent.beta:g}"
    elif latent.kind == "multiplex":
        tag = f"k{latent.top_k}{latent.merge}"
    else:
        tag = f"lt{latent.temperature:g}" + (f"k{latent.top_k}" if latent.kind == "topk-soft" else "")
        tag += f"p{latent.min_p:g}" if latent.min_p else ""
    return tag + ("-emit" if latent.emit else "")


def setting_id(gate: GateConfig, latent: LatentConfig, decode: DecodeConfig) -> str:
    """A short, readable, deterministic name, e.g. ``entropy-1.5nats-soft`` or ``token``."""
    if gate.kind == "token":
        parts = ["token"]
    elif gate.kind == "latent":
        parts = ["latent", latent.kind]
    elif gate.kind == "fixed":
        parts = [f"fixed-k{gate.k}", latent.kind]
    elif gate.threshold_map is not None:  # one id for every domain's threshold
        digest = hashlib.sha256(json.dumps(gate.threshold_map).encode()).hexdigest()[:6]
        parts = [f"entropy-map{digest}-{gate.unit[:4]}", latent.kind]
    elif gate.kind == "think-router":
        parts = [f"think-router-{gate.threshold:g}", latent.kind]
    elif gate.kind == "swir":
        parts = [
            f"swir-w{gate.window}"
            + (f"s{gate.max_switches}" if gate.max_switches is not None else "")
            + (f"a{gate.alpha0:g}b{gate.beta0:g}" if (gate.alpha0, gate.beta0) != (1.0, 0.7) else ""),
            latent.kind,
        ]
    elif gate.kind == "cold-stop":
        parts = [
            f"cold-stop-{gate.cold_stop_entropy:g}x{gate.cold_stop_steps}T{gate.cold_stop_temperature:g}",
            latent.kind,
        ]
    else:
        below = "-below" if gate.direction == "below" else ""
        parts = [f"entropy-{gate.threshold:g}{gate.unit[:4]}{below}", latent.kind]
        if gate.max_consecutive is not None:
            parts.append(f"run{gate.max_consecutive}")
        if gate.max_latent is not None:
            parts.append(f"max{gate.max_latent}")
    if gate.kind != "token" and latent.kind in ("soft", "topk-soft", "moi", "random-soft", "multiplex"):
        parts.append(_latent_tag(latent))
    if decode.temperature > 0:
        parts.append(f"T{decode.temperature:g}p{decode.top_p:g}k{decode.top_k}")
    if decode.loop is not None:
        parts.append(decode.loop.tag())
    return "-".join(parts)
