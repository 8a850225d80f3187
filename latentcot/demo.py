"""The embedded default experiment: the built-in models (those whose card does not keep them out: the
fork families) on the task each was trained for.

Per model, one run, decoded as prefix-shared trees: the threshold sweep (token-only and latent-only
baselines included) with the latent mode that suits the model — ``soft`` for a model that never saw
latents, its own trained latent (and thought markers) for a COCONUT model, plus the decoding it was
trained for (the ``fixed`` gate); two published methods beside it (Soft Thinking, SwiReasoning), so
the report opens with the paired method comparison; and one ablation (the same decoding with a
``zero`` latent: does the latent's content matter?). Measured: the answer-level probe
(``--measure rollout``) where the settings have no thought markers, the counterfactual step probe on
the COCONUT models (a forced latent would need a marker step there). The demo ends with every model's
first look per domain (``latentcot.analysis.overview``), one table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from latentcot.config import DecodeConfig, GateConfig, LatentConfig, ModelConfig
from latentcot.errors import InputError
from latentcot.experiment import Plan, Setting
from latentcot.grid import sweep_settings
from latentcot.methods import parse_method
from latentcot.validation import is_int, require
from latentcot.zoo.registry import ZooModel

# Trained small models are confident: most steps have H < 0.5 nats, so the grid is geometric.
DEFAULT_THRESHOLDS = (0.01, 0.03, 0.1, 0.3, 1.0)
# Published methods decoded beside the sweep. SwiReasoning blends thought markers into its switches only for
# a model trained with them (the zoo's tokenizer has <bot>/<eot> whether or not a model saw them).
METHODS = ("soft-thinking", "swir:markers=none")
# Answer-level branches at token steps 0, 5 and 10 of each trajectory: confident steps and, in the fork
# families, a fork: the first and third operand choices of the equivalent family (steps 0 and 10), the
# child chosen at the uncertain families' second fork ("Every m1 is a ?", step 10).
ROLLOUT = "rollout:every=5,max=3"


@dataclass(frozen=True)
class DemoConfig:
    limit: int = 100  # test examples per model
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    max_new_tokens: int | None = None  # None: each model's room (see `room`)
    batch_size: int = 100  # the whole default test set in one batch (forks of the trees share it)
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        require(
            all(is_int(n) and n >= 1 for n in (self.limit, self.batch_size, self.max_new_tokens or 1)),
            "demo limit, batch size and max new tokens must be integers >= 1",
        )


def demo_models(models: list[ZooModel]) -> list[ZooModel]:
    """The built-in models that take part: complete, with a card naming their task, and not kept out of
    the demo by their card (``"demo": false``: models kept for other studies)."""
    chosen = [
        m
        for m in models
        if m.origin == "built-in" and not m.missing and m.card.get("task") and m.card.get("demo", True)
    ]
    if not chosen:
        raise InputError("no built-in model is available for the demo (`latentcot models` lists the zoo)")
    return chosen


def room(model: ZooModel, limit: int, seed: int = 0) -> int:
    """Generated positions for ``model`` on its first ``limit`` test problems: 1.5 × the longest gold
    completion (chain of thought and answer line, in its own tokens), plus its trained latents and
    markers, plus 8. Latent-only settings never emit an end token, so this bounds what they cost."""
    from latentcot.model import load_tokenizer
    from latentcot.tasks import load_task
    from latentcot.zoo.settings import Layout

    tokenizer = load_tokenizer(str(model.path), ModelConfig(str(model.path)))
    task = load_task(model.card["task"], str(model.path / model.card.get("prompt", "prompt.json")))
    texts = [Layout("cot").completion(e) for e in task.examples("test", limit, seed)]
    longest = max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    trained = model.card.get("decode") or {}
    return (3 * longest + 1) // 2 + int(trained.get("k") or 0) + 2 * bool(trained.get("markers")) + 8


def demo_plan(model: ZooModel, cfg: DemoConfig) -> Plan:
    trained = model.card.get("decode") or {"gate": "token"}
    markers = tuple(trained["markers"]) if trained.get("markers") else None
    max_new_tokens = cfg.max_new_tokens or room(model, cfg.limit, cfg.seed)
    decode = DecodeConfig(max_new_tokens=max_new_tokens, markers=markers)
    latent = LatentConfig(trained.get("latent", "soft"))
    settings = list(sweep_settings(cfg.thresholds, [latent], decode))
    if trained.get("gate") == "fixed":  # how a COCONUT model was trained to think, and its ablation
        fixed = GateConfig("fixed", k=int(trained["k"]))
        settings += [Setting(fixed, latent, decode), Setting(fixed, LatentConfig("zero"), decode)]
    else:  # the ablation of the sweep's latent at its middle threshold
        middle = cfg.thresholds[len(cfg.thresholds) // 2]
        settings.append(Setting(GateConfig("entropy", threshold=middle), LatentConfig("zero"), decode))
    methods = [name.replace(":markers=none", "") if markers else name for name in METHODS]
    settings += [Setting.of_method(parse_method(name), decode) for name in methods]
    return Plan(
        model=ModelConfig(f"builtin:{model.name}", device=cfg.device),
        tasks=(model.card["task"],),
        settings=tuple(settings),
        split="test",
        limit=cfg.limit,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        measure=("counterfactual",) if markers else (ROLLOUT,),
    )


def overview_of(reports: Sequence[tuple[str, pd.DataFrame]]) -> pd.DataFrame:
    """Each model's report overview (one row per domain), with the model's name first."""
    frames = [frame.assign(model=name)[["model", *frame.columns]] for name, frame in reports]
    return pd.concat(frames, ignore_index=True)


def overview_text(overview: pd.DataFrame) -> str:
    """The demo's last table: per model and domain, how uncertain token CoT is (share of steps above
    0.3 nats), the best other setting against it, the best τ and the answer-level slope."""
    from latentcot.analysis.overview import overview_display
    from latentcot.analysis.render import text_table

    return text_table(overview_display(overview))
