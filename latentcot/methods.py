"""Named decoding methods: the published latent-decoding rules as presets of a gate and a latent mode.

``--method NAME[:key=value,...]`` (on ``run`` and ``sweep``) picks one; ``latentcot methods`` lists them
with their papers and defaults. A method resolves to an ordinary setting (a gate, a latent mode, the
run's decoding options) plus its name, so every method decodes in the same engine, on the same
examples and seeds, and its records carry ``setting.method`` and every resolved parameter. The rules
themselves live where every gate and latent mode lives (``latentcot/gates.py``, ``latentcot/latent.py``),
each with its reference; this module only says which of them make up a method.

To add a method: write its gate and/or latent mode there (with a test against a literal transcription
of the published rule), then add a :class:`Method` to ``METHODS`` below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from latentcot.config import GateConfig, LatentConfig
from latentcot.errors import InputError
from latentcot.validation import require

REQUIRED = object()  # a parameter without a default
# Begin/end-of-thought tokens: this project's zoo, the COCONUT paper's GPT-2 models, reasoning models (Qwen3, R1).
THOUGHT_MARKERS = (("<bot>", "<eot>"), ("<|start-latent|>", "<|end-latent|>"), ("<think>", "</think>"))
_MARKERS_HELP = (
    "auto (the model's own thought markers, when its tokenizer has them: "
    f"{' or '.join(','.join(pair) for pair in THOUGHT_MARKERS)}) | none | BEGIN,END"
)


@dataclass(frozen=True)
class Param:
    name: str
    default: Any  # REQUIRED when the user must give it
    kind: type  # int | float | str; converts the text of name=value
    help: str
    optional: bool = False  # None is a valid value (e.g. "no limit")


@dataclass(frozen=True)
class Method:
    name: str
    summary: str  # one line
    paper: str  # title and year; "" for this project's own rules
    params: tuple[Param, ...]
    build: Callable[[Mapping[str, Any]], tuple[GateConfig, LatentConfig]]  # resolved params -> configs
    threshold: str | None = None  # the parameter `sweep --thresholds` varies, if any

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}


# Soft Thinking's soft input, which ThinkRouter reuses: top-k after temperature and min-p filtering.
_SOFT_THINKING_LATENT = (
    Param("top_k", 10, int, "tokens mixed into the soft input"),
    Param("temperature", 0.6, float, "temperature of the mixture (and of Cold Stop's entropy)"),
    Param("min_p", 0.001, float, "drop tokens below min_p x the top probability"),
)
_COLD_STOP = (
    Param("cold_stop_entropy", 0.01, float, "Cold Stop: entropy bound of the tempered distribution"),
    Param("cold_stop_steps", 256, int, "Cold Stop: consecutive steps below the bound that end thinking"),
)


def _cold_stop(p: Mapping[str, Any], temperature: float) -> GateConfig:
    return GateConfig(
        "cold-stop",
        cold_stop_entropy=p["cold_stop_entropy"],
        cold_stop_steps=p["cold_stop_steps"],
        cold_stop_temperature=temperature,
    )


def _soft_thinking_latent(p: Mapping[str, Any]) -> LatentConfig:
    return LatentConfig("topk-soft", temperature=p["temperature"], top_k=p["top_k"], min_p=p["min_p"])


METHODS: tuple[Method, ...] = (
    Method(
        "token",
        "ordinary chain of thought: every step samples a token",
        "",
        (),
        lambda p: (GateConfig("token"), LatentConfig()),
    ),
    Method(
        "coconut",
        "the first k steps feed the final hidden state back, between the model's thought markers",
        "Training Large Language Models to Reason in a Continuous Latent Space (COCONUT), 2024",
        (
            Param("k", REQUIRED, int, "leading latent steps (the model's trained number of thoughts)"),
            Param("latent", "hidden", str, "latent mode fed (hidden: COCONUT; an ablation to test content)"),
            Param("markers", "auto", str, _MARKERS_HELP),
        ),
        lambda p: (GateConfig("fixed", k=p["k"]), LatentConfig(p["latent"])),
    ),
    Method(
        "entropy",
        "latent when the next-token entropy is above the threshold (direction=below: under it)",
        "",
        (
            Param("threshold", REQUIRED, float, "entropy threshold, in unit"),
            Param("unit", "nats", str, "nats | bits | normalized (H / log V)"),
            Param("direction", "above", str, "above | below"),
            Param("latent", "soft", str, "latent mode fed on latent steps"),
            Param("latent_temperature", 1.0, float, "temperature of a soft latent"),
            Param("max_consecutive", None, int, "at most this many latent steps in a row", optional=True),
            Param("max_latent", None, int, "at most this many latent steps per row", optional=True),
        ),
        lambda p: (
            GateConfig(
                "entropy",
                threshold=p["threshold"],
                unit=p["unit"],
                direction=p["direction"],
                max_consecutive=p["max_consecutive"],
                max_latent=p["max_latent"],
            ),
            LatentConfig(p["latent"], temperature=p["latent_temperature"]),
        ),
        threshold="threshold",
    ),
    Method(
        "soft-thinking",
        "every thinking step feeds the top-k soft mixture; Cold Stop ends thinking, then tokens",
        "Soft Thinking: Unlocking the Reasoning Potential of LLMs in Continuous Concept Space, 2025",
        (*_SOFT_THINKING_LATENT, *_COLD_STOP),
        lambda p: (_cold_stop(p, p["temperature"]), _soft_thinking_latent(p)),
    ),
    Method(
        "swir",
        "switch latent <-> token on entropy against a reference; latent steps also emit their sampled token",
        "SwiReasoning: Switch-Thinking in Latent and Explicit for Pareto-Superior Reasoning LLMs, 2025",
        (
            Param("window", 512, int, "steps a token segment lasts before it may switch back to latent"),
            Param("max_switches", None, int, "latent -> token switches before a row stays in tokens", optional=True),
            Param("alpha0", 1.0, float, "soft share of the input at a switch to latent (rest: begin marker)"),
            Param("beta0", 0.7, float, "soft share of the input at a switch to tokens (rest: end marker)"),
            Param("markers", "auto", str, _MARKERS_HELP + "; blended into switch inputs, never inserted"),
        ),
        lambda p: (
            GateConfig(
                "swir", window=p["window"], max_switches=p["max_switches"], alpha0=p["alpha0"], beta0=p["beta0"]
            ),
            LatentConfig("soft", temperature=1.0, emit=True),
        ),
    ),
    Method(
        "think-router",
        "token step when p_max < threshold (unsure), Soft Thinking's soft input otherwise",
        "ThinkRouter: Efficient Reasoning via Routing Thinking between Latent and Discrete Spaces, 2026",
        (
            Param("threshold", 0.5, float, "p_max below which a step samples a token (tune on validation)"),
            *_SOFT_THINKING_LATENT,
        ),
        lambda p: (GateConfig("think-router", threshold=p["threshold"]), _soft_thinking_latent(p)),
        threshold="threshold",
    ),
    Method(
        "moi",
        "every step samples a token and feeds an entropy-weighted mix of it and the top-k mixture",
        "Text Generation Beyond Discrete Token Sampling (Mixture of Inputs), 2025",
        (
            Param("top_k", 20, int, "tokens of the mixture"),
            Param("beta", 1.0, float, "weight of the sampled token in the posterior mixture"),
        ),
        lambda p: (GateConfig("latent"), LatentConfig("moi", top_k=p["top_k"], beta=p["beta"], emit=True)),
    ),
    Method(
        "random-soft",
        "soft input from Gumbel-perturbed probabilities (the row's own noise); Cold Stop ends thinking",
        "LLMs are Single-threaded Reasoners: Demystifying the Working Mechanism of Soft Thinking, 2025",
        (Param("gumbel_temperature", 0.5, float, "temperature of the Gumbel-softmax"), *_COLD_STOP),
        lambda p: (_cold_stop(p, 0.6), LatentConfig("random-soft", temperature=p["gumbel_temperature"])),
    ),
    Method(
        "multiplex",
        "width tokens sampled independently from the row's generator, their embeddings averaged; Cold Stop",
        "Multiplex Thinking: Reasoning via Token-wise Branch-and-Merge, 2026",
        (
            Param("width", 3, int, "tokens sampled per step (K)"),
            Param("merge", "mean", str, "mean (uniform average) | weighted (by their probabilities)"),
            *_COLD_STOP,
        ),
        lambda p: (_cold_stop(p, 0.6), LatentConfig("multiplex", top_k=p["width"], merge=p["merge"])),
    ),
)
BY_NAME: Mapping[str, Method] = {m.name: m for m in METHODS}


@dataclass(frozen=True)
class MethodChoice:
    """A method with its parameters resolved (defaults filled in, types converted, checked)."""

    method: Method
    params: tuple[tuple[str, Any], ...]

    @property
    def name(self) -> str:
        return self.method.name

    def configs(self) -> tuple[GateConfig, LatentConfig]:
        return self.method.build(dict(self.params))

    def markers(self) -> str | None:
        """The method's ``markers`` parameter ("auto", "none" or "BEGIN,END"), if it has one."""
        return dict(self.params).get("markers")


def _convert(param: Param, text: str, spec: str) -> Any:
    if param.optional and text.lower() in ("none", "null", ""):
        return None
    try:
        return param.kind(text)
    except ValueError:
        raise InputError(
            f"bad value {text!r} for {param.name} in --method {spec!r}; expected {param.kind.__name__}"
        ) from None


def resolve(method: Method, given: Mapping[str, Any]) -> MethodChoice:
    """Fill in defaults, refuse a missing required parameter, and build the configs once to validate."""
    valid = [p.name for p in method.params]
    unknown = sorted(set(given) - set(valid))
    require(
        not unknown,
        f"unknown parameter(s) {', '.join(unknown)} for method {method.name}; valid: {', '.join(valid) or 'none'}",
    )
    values = {**method.defaults(), **given}
    missing = [name for name, value in values.items() if value is REQUIRED]
    if missing:
        raise InputError(
            f"method {method.name} needs {', '.join(missing)} (e.g. --method {method.name}:{missing[0]}=…)"
        )
    choice = MethodChoice(method, tuple(values.items()))
    choice.configs()  # the gate and latent configs check every value (InputError, one line)
    return choice


def parse_method(spec: str) -> MethodChoice:
    """``NAME`` or ``NAME:key=value,...`` -> a resolved method."""
    return resolve(*_parse(spec))


def expand_thresholds(spec: str, thresholds: list[float]) -> list[MethodChoice]:
    """What ``sweep --method SPEC --thresholds ...`` decodes: one setting per threshold for a method
    that has a threshold parameter (which the spec must then leave out), else the method as given."""
    method, given = _parse(spec)
    if not thresholds or method.threshold is None:
        return [resolve(method, given)]
    require(
        method.threshold not in given, f"--method {spec} sets {method.threshold} and --thresholds sweeps it; give one"
    )
    return [resolve(method, {**given, method.threshold: tau}) for tau in thresholds]


def _parse(spec: str) -> tuple[Method, dict[str, Any]]:
    name, _, rest = spec.strip().partition(":")
    method = BY_NAME.get(name.strip())
    require(method is not None, f"unknown method {name.strip()!r}; valid: {', '.join(BY_NAME)} (latentcot methods)")
    params = {p.name: p for p in method.params}
    given: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = (s.strip() for s in item.partition("="))
        require(bool(eq) and bool(key), f"bad method parameter {item!r} in {spec!r}; expected key=value")
        require(key not in given, f"method parameter {key!r} given twice in {spec!r}")
        require(
            key in params, f"unknown parameter {key!r} for method {method.name}; valid: {', '.join(params) or 'none'}"
        )
        given[key] = _convert(params[key], value, spec)
    return method, given


def describe() -> list[str]:
    """The text of ``latentcot methods``: per method its summary, paper and parameters with defaults."""
    lines = []
    for m in METHODS:
        lines.append(f"{m.name}: {m.summary}")
        if m.paper:
            lines.append(f"    paper: {m.paper}")
        for p in m.params:
            default = "(required)" if p.default is REQUIRED else f"= {p.default}"
            lines.append(f"    {p.name} {default}: {p.help}")
        if m.threshold:
            lines.append(f"    sweep --thresholds varies {m.threshold}")
    return lines


def method_params(choice: MethodChoice) -> dict[str, Any]:
    """What a record's ``setting`` adds for a method: its name and every resolved parameter."""
    return {"method": choice.name, "method_params": dict(choice.params)}
