"""The CLI's options, generated from one table (decoding commands) or from a config dataclass (train).

Each decoding option is declared once in ``_COMMON`` and reaches ``run``/``sweep`` as one frozen
``CommonOptions``; every ``latentcot train`` option comes from a ``TrainConfig`` field. The commands
themselves (``latentcot.cli``) only wire.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import make_dataclass
from pathlib import Path
from types import MappingProxyType

import typer

from latentcot.zoo.settings import TrainConfig

_COMMON = {
    "model": (
        str,
        typer.Option(..., "--model", "-m", help="HF hub id, local save_pretrained directory, or builtin:NAME."),
    ),
    "task": (
        list[str],
        typer.Option(
            ...,
            "--task",
            "-t",
            help="Registered task (name or name:key=value,...) or a .json/.jsonl file; repeat for several.",
        ),
    ),
    "out": (
        Path | None,
        typer.Option(None, "--out", "-o", help="Run directory (default runs/<date>-<time>-<hash>)."),
    ),
    "limit": (int | None, typer.Option(None, "--limit", "-n", min=1, help="Examples per task.")),
    "split": (str, typer.Option("test", help="Split of a generated task: train, valid or test.")),
    # None = not given: these shape the --gate/--latent settings; with --method they are method parameters
    "unit": (str | None, typer.Option(None, help="Threshold unit: nats (default) | bits | normalized (H / log V).")),
    "latent_temperature": (
        float | None,
        typer.Option(None, help="Soft latent modes: softmax temperature of the mixture (default 1)."),
    ),
    "latent_top_k": (int | None, typer.Option(None, help="topk-soft: number of token embeddings mixed (default 8).")),
    "markers": (
        str | None,
        typer.Option(None, help="Begin,end thought tokens fed around latent segments, e.g. '<bot>,<eot>'."),
    ),
    "temperature": (float, typer.Option(0.0, help="Sampling temperature; 0 = greedy.")),
    "top_p": (float, typer.Option(1.0, help="Nucleus sampling mass.")),
    "top_k": (int, typer.Option(0, help="Sample among the k most likely tokens (0 = all).")),
    "max_new_tokens": (int, typer.Option(128, help="Generated positions per example (tokens, latents, markers).")),
    "stop": (list[str], typer.Option([], "--stop", help="Stop string; repeat for several.")),
    "batch_size": (int, typer.Option(16, min=1, help="Examples decoded together.")),
    "seed": (int, typer.Option(0, help="Run seed; each example's sampling seed derives from it and the example id.")),
    "resume": (bool, typer.Option(False, "--resume", help="Continue a run directory, skipping recorded samples.")),
    "wait": (
        bool,
        typer.Option(False, "--wait", help="If another process is writing the run directory, wait for it to finish."),
    ),
    "executor": (str, typer.Option("local", help="Where work units decode: local (this process) | ray.")),
    "workers": (int, typer.Option(1, min=1, help="--executor ray: actors, each loading the model once.")),
    "gpus_per_worker": (
        float,
        typer.Option(0.0, min=0, help="--executor ray: GPUs per actor (0 on CPU; >1 for --tensor-parallel-size)."),
    ),
    "ray_address": (
        str | None,
        typer.Option(None, help="--executor ray: join this cluster (e.g. auto, ray://head:10001); default: start one."),
    ),
    "measure": (
        list[str],
        typer.Option(
            [],
            "--measure",
            help="Extra per-step measurements: counterfactual (KL of the next "
            "step had the latent been fed, latent-vs-token geometry, logit lens); "
            "rollout[:every=K,max=M,min_entropy=H] (feed the latent at a token step and decode on: "
            "did the answer change?).",
        ),
    ),
    "prompt": (Path | None, typer.Option(None, "--prompt", help="Prompt template file overriding the task's.")),
    "tokenizer": (
        str | None,
        typer.Option(None, help="Tokenizer id or directory, when the model's own is missing."),
    ),
    "device": (str, typer.Option("auto", help="auto | cpu | cuda | cuda:N.")),
    "dtype": (str, typer.Option("auto", help="auto | float32 | bfloat16 | float16 | float64 (exact comparisons).")),
    "trust_remote_code": (bool, typer.Option(False, help="Allow code shipped with a hub checkpoint to run.")),
    "loops": (
        int | None,
        typer.Option(
            None,
            "--loops",
            min=1,
            help="Looped models: iterations of the shared block per token (with --exit: the most).",
        ),
    ),
    "exit": (
        str | None,
        typer.Option(
            None,
            "--exit",
            help="Looped models: adaptive exit per token, kl:5e-4 | entropy:1e-3 | argmax:M (stable for M iterations).",
        ),
    ),
    "repeat_layers": (
        str | None,
        typer.Option(
            None,
            "--repeat-layers",
            help="Experimental, any model: apply layers START:END (END exclusive) --repeats times.",
        ),
    ),
    "repeats": (
        int,
        typer.Option(2, "--repeats", min=1, help="With --repeat-layers: how many times the range is applied."),
    ),
    "backend": (
        str,
        typer.Option(
            "hf",
            help="Decoding engine: hf (transformers, every feature) | vllm (soft/topk-soft latents, "
            "no --measure or --markers).",
        ),
    ),
    "tensor_parallel_size": (int, typer.Option(1, help="vllm: GPUs the model is split over.")),
    "max_model_len": (int | None, typer.Option(None, help="vllm: context length (default: the model's).")),
    "gpu_memory_utilization": (
        float | None,
        typer.Option(None, help="vllm: fraction of GPU memory it may take (vLLM's default 0.92)."),
    ),
    "kv_cache_gib": (
        float | None,
        typer.Option(None, help="vllm: KV-cache size in GiB, instead of a memory fraction (needed on CPU)."),
    ),
    "enforce_eager": (
        bool,
        typer.Option(
            False, "--enforce-eager", help="vllm: no CUDA graphs or compilation (starts faster, decodes slower)."
        ),
    ),
}

# The options every decoding command takes, as one frozen object (filled in by ``decoding_options``);
# its fields are _COMMON's names and types, so the two cannot drift apart.
CommonOptions = make_dataclass("CommonOptions", [(name, kind) for name, (kind, _) in _COMMON.items()], frozen=True)


def decoding_options(command: Callable) -> Callable:
    """Give ``command`` every option of CommonOptions; they arrive as one ``common`` argument.

    Keeps ``run`` and ``sweep`` (and later decoding commands) from repeating two dozen declarations.
    """
    hints = typing.get_type_hints(command)
    own = [
        inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=p.default, annotation=hints[p.name])
        for p in inspect.signature(command).parameters.values()
        if p.name != "common"
    ]
    shared = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
        for name, (kind, option) in _COMMON.items()
    ]

    @functools.wraps(command)
    def wrapper(**values):
        common = CommonOptions(**{name: values.pop(name) for name in _COMMON})
        return command(common=common, **values)

    wrapper.__signature__ = inspect.Signature(shared[:2] + own + shared[2:])
    wrapper.__annotations__ = {p.name: p.annotation for p in wrapper.__signature__.parameters.values()}
    return wrapper


# Short aliases of train options; every long name, type, default and help comes from TrainConfig.
_TRAIN_SHORT_FLAGS = MappingProxyType({"task": "-t"})


def _train_option(field: dataclasses.Field):
    """The option of one TrainConfig field: ``--batch-size`` for ``batch_size``; required without a default."""
    default = ... if field.default is dataclasses.MISSING else field.default
    short = _TRAIN_SHORT_FLAGS.get(field.name)
    names = (f"--{field.name.replace('_', '-')}", short) if short else ()  # typer derives the long name itself
    return typer.Option(default, *names, help=field.metadata["help"])


def train_options(command: Callable) -> Callable:
    """Give ``command`` an option per TrainConfig field (but those marked ``cli=False``); they arrive
    as one validated ``cfg`` argument. TrainConfig is the one place a training setting is declared:
    the command adds only its own options (``--out``, ``--resume``), listed after the required ones."""
    fields = [f for f in dataclasses.fields(TrainConfig) if f.metadata.get("cli", True)]
    field_types = typing.get_type_hints(TrainConfig)
    generated = [
        inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, default=_train_option(f), annotation=field_types[f.name]
        )
        for f in fields
    ]
    required = [p for p, f in zip(generated, fields) if f.default is dataclasses.MISSING]
    optional = [p for p, f in zip(generated, fields) if f.default is not dataclasses.MISSING]
    hints = typing.get_type_hints(command)
    own = [
        inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=p.default, annotation=hints[p.name])
        for p in inspect.signature(command).parameters.values()
        if p.name != "cfg"
    ]

    @functools.wraps(command)
    def wrapper(**values):
        cfg = TrainConfig(**{f.name: values.pop(f.name) for f in fields})
        return command(cfg=cfg, **values)

    wrapper.__signature__ = inspect.Signature(required + own + optional)
    wrapper.__annotations__ = {p.name: p.annotation for p in wrapper.__signature__.parameters.values()}
    return wrapper


def typed_command(ctx: typer.Context) -> list[str]:
    """``latentcot train`` with the options typed on the command line, in long form, for the card:
    also right when called as ``main(argv)``, where ``sys.argv`` is not the command."""
    words = ["latentcot", "train"]
    for param in ctx.command.params:
        if ctx.get_parameter_source(param.name).name != "COMMANDLINE":
            continue
        value, flag = ctx.params[param.name], next(o for o in param.opts if o.startswith("--"))
        if getattr(param, "is_flag", False):  # --resume; --reset-optimizer / --no-reset-optimizer
            words.append(flag if value else param.secondary_opts[0])
        else:
            words += [flag, str(value)]
    return words
