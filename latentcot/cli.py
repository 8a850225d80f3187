"""The ``latentcot`` command. Each command only wires options -> configs -> objects -> store."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from typer.exceptions import TyperException

from latentcot.cli_options import CommonOptions, decoding_options, train_options, typed_command
from latentcot.errors import InputError
from latentcot.zoo.settings import TrainConfig  # torch-free: the train options are generated from it

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Compare latent and token chain of thought in causal language models.",
)

RUN_EXAMPLES = """
Examples:

  latentcot run --model ./my-model --task data.jsonl --gate entropy --threshold 1.5 --latent soft --out runs/soft-1.5

  latentcot run --model builtin:addition-4x2r-coconut --task addition:n=4,digits=2,reverse=1 --gate fixed --k 3 --markers "<bot>,<eot>" --out runs/coconut

  latentcot run --model Qwen/Qwen2.5-0.5B --task gsm8k_test.jsonl --gate token --limit 100 --device cuda --out runs/qwen-cot
"""

SWEEP_EXAMPLES = """
Examples:

  latentcot sweep --model ./my-model --task addition --task prosqa --thresholds 0:3:0.25 --latent soft,hidden --out runs/grid

  latentcot sweep --model ./my-model --task gsm8k.jsonl --thresholds 0.1,0.2,0.4 --unit normalized --limit 200

  latentcot sweep --model ./my-model --task addition --task prosqa --threshold-map best_tau.json --out runs/per-domain
"""


def _execute(common: CommonOptions, settings, **sharing) -> None:
    """The wiring shared by run and sweep: configs -> plan -> experiment (``sharing``: share=, max_rows=)."""
    from transformers.utils import logging as hf_logging

    from latentcot import experiment
    from latentcot.config import BackendConfig, ExecutorConfig, ModelConfig

    hf_logging.disable_progress_bar()  # the run has its own progress bar; keep stderr readable
    from latentcot.repeat import parse_range

    model_cfg = ModelConfig(
        common.model,
        tokenizer=common.tokenizer,
        dtype=common.dtype,
        device=common.device,
        trust_remote_code=common.trust_remote_code,
        repeat_layers=(*parse_range(common.repeat_layers), common.repeats) if common.repeat_layers else None,
    )
    plan = experiment.Plan(
        model=model_cfg,
        tasks=tuple(common.task),
        settings=tuple(settings),
        split=common.split,
        limit=common.limit,
        batch_size=common.batch_size,
        seed=common.seed,
        prompt_file=str(common.prompt) if common.prompt else None,
        measure=tuple(dict.fromkeys(common.measure)),
        backend=BackendConfig(
            common.backend,
            common.tensor_parallel_size,
            common.max_model_len,
            common.gpu_memory_utilization,
            common.kv_cache_gib,
            common.enforce_eager,
        ),
    )
    executor = ExecutorConfig(common.executor, common.workers, common.gpus_per_worker, common.ray_address)
    experiment.execute(
        plan, common.out, resume=common.resume, wait=common.wait, argv=sys.argv, executor=executor, **sharing
    )


def _decode_config(common: CommonOptions):
    from latentcot.config import DecodeConfig
    from latentcot.looping import LoopConfig, parse_exit

    markers = tuple(common.markers.split(",")) if common.markers else None
    loop = (
        parse_exit(common.exit, common.loops)
        if common.exit
        else (LoopConfig(loops=common.loops) if common.loops is not None else None)
    )
    return DecodeConfig(
        common.max_new_tokens, common.temperature, common.top_p, common.top_k, tuple(common.stop), markers, loop=loop
    )


def _latent_shaping(common: CommonOptions) -> list[tuple[str, object]]:
    """The common options that shape --gate/--latent settings (None when not given)."""
    return [
        ("--unit", common.unit),
        ("--latent-temperature", common.latent_temperature),
        ("--latent-top-k", common.latent_top_k),
    ]


def _latent_config(common: CommonOptions, kind: str):
    from latentcot.config import LatentConfig

    given = {"temperature": common.latent_temperature, "top_k": common.latent_top_k}
    return LatentConfig(kind, **{name: value for name, value in given.items() if value is not None})


@app.command(epilog=RUN_EXAMPLES)
@decoding_options
def run(
    common: CommonOptions,
    method: str | None = typer.Option(
        None, "--method", help="A named method NAME[:key=value,...] (latentcot methods); replaces --gate/--latent."
    ),
    gate: str | None = typer.Option(
        None, help="token (default) | latent | entropy | fixed | think-router | swir | cold-stop."
    ),
    threshold: float | None = typer.Option(None, "--threshold", help="Entropy gate: latent when H > threshold."),
    threshold_map: Path | None = typer.Option(
        None,
        "--threshold-map",
        help="Entropy gate: JSON {domain: threshold} ('*' = other domains) instead of one --threshold.",
    ),
    k: int | None = typer.Option(None, "--k", help="Fixed gate: number of leading latent steps."),
    max_consecutive: int | None = typer.Option(None, help="Entropy gate: at most this many latent steps in a row."),
    max_latent: int | None = typer.Option(None, help="Entropy gate: at most this many latent steps per sequence."),
    latent: str | None = typer.Option(
        None, help="Latent mode: hidden (default) | hidden-normed | soft | topk-soft | …"
    ),
) -> None:
    """Decode task examples under one method (or gate and latent mode); append one record per example."""
    from latentcot.config import GateConfig
    from latentcot.experiment import Setting
    from latentcot.grid import read_threshold_map
    from latentcot.methods import parse_method

    if method is not None:
        given = [
            name
            for name, value in (
                ("--gate", gate),
                ("--threshold", threshold),
                ("--threshold-map", threshold_map),
                ("--k", k),
                ("--max-consecutive", max_consecutive),
                ("--max-latent", max_latent),
                ("--latent", latent),
                *_latent_shaping(common),
            )
            if value is not None
        ]
        if given:
            raise InputError(f"--method replaces {given[0]}: give its parameters as --method NAME:key=value")
        _execute(common, [Setting.of_method(parse_method(method), _decode_config(common))])
        return
    taus = tuple(read_threshold_map(threshold_map).items()) if threshold_map else None
    unit = common.unit or "nats"
    gate_cfg = GateConfig(gate or "token", threshold, unit, max_consecutive, max_latent, k, threshold_map=taus)
    _execute(common, [Setting(gate_cfg, _latent_config(common, latent or "hidden"), _decode_config(common))])


@app.command(epilog=SWEEP_EXAMPLES)
@decoding_options
def sweep(
    common: CommonOptions,
    thresholds: str | None = typer.Option(
        None, "--thresholds", help="Entropy thresholds: a list '0,0.5,1' or a range 'start:stop:step' (stop included)."
    ),
    threshold_map: Path | None = typer.Option(
        None,
        "--threshold-map",
        help="Also run one setting with a threshold per domain: JSON {domain: threshold}, '*' = other domains.",
    ),
    latent: str | None = typer.Option(
        None, help="Latent mode(s) of the entropy grid, comma-separated: hidden (default), hidden-normed, soft, …"
    ),
    max_consecutive: int | None = typer.Option(None, help="Entropy gate: at most this many latent steps in a row."),
    max_latent: int | None = typer.Option(None, help="Entropy gate: at most this many latent steps per sequence."),
    method: list[str] = typer.Option(
        [], "--method", help="A named method NAME[:key=value,...], repeatable; --thresholds sweeps its threshold."
    ),
    no_share: bool = typer.Option(
        False, "--no-share", help="Decode every setting on its own instead of as prefix-shared trees (same records)."
    ),
    max_rows: int | None = typer.Option(
        None,
        "--max-rows",
        min=1,
        help="Live rows of a prefix-shared tree (default 4 x --batch-size); forks past it are decoded again later.",
    ),
) -> None:
    """Methods, thresholds × latent modes × tasks in one run directory, plus the token-only baseline (and the
    latent-only one of the entropy grid)."""
    from latentcot.grid import method_settings, parse_thresholds, read_threshold_map, sweep_settings, unique_settings

    taus = parse_thresholds(thresholds) if thresholds is not None else []
    decode = _decode_config(common)
    settings = method_settings(method, taus, decode) if method else ()
    grid_wanted = not method or latent is not None or threshold_map is not None  # the entropy grid of --latent
    if not grid_wanted:  # options of the entropy grid would be silently dropped
        shaping = [("--max-consecutive", max_consecutive), ("--max-latent", max_latent), *_latent_shaping(common)]
        given = [name for name, value in shaping if value is not None]
        if given:
            raise InputError(
                f"{given[0]} shapes the --latent grid; with --method give it as a method parameter "
                "(latentcot methods), or add --latent for the grid"
            )
    if grid_wanted:
        latents = [_latent_config(common, kind.strip()) for kind in (latent or "hidden").split(",") if kind.strip()]
        grid = sweep_settings(
            taus,
            latents,
            decode,
            unit=common.unit or "nats",
            threshold_map=read_threshold_map(threshold_map) if threshold_map else None,
            max_consecutive=max_consecutive,
            max_latent=max_latent,
        )
        settings = unique_settings((*grid, *settings))
    _execute(common, settings, share=not no_share, max_rows=max_rows)


@app.command(
    "methods",
    epilog="Example:\n\n  latentcot methods\n\n  latentcot sweep --model M --task addition --method token --method coconut:k=2 --method soft-thinking --method swir --out runs/methods",
)
def list_methods_command() -> None:
    """List the named decoding methods: rule, paper, parameters with their defaults."""
    from latentcot.methods import describe

    for line in describe():
        typer.echo(line)


@app.command(epilog="Examples:\n\n  latentcot analyze runs/grid\n\n  latentcot analyze runs/grid --out reports/grid")
def analyze(
    run_dir: Path = typer.Argument(..., help="A run directory (with samples.jsonl)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Report directory (default RUN_DIR/report)."),
    seed: int = typer.Option(0, help="Seed of the bootstrap confidence intervals."),
) -> None:
    """Tables, figures, summary.md and a self-contained report.html for a run; prints the headline table."""
    from latentcot.analysis import AnalysisOptions, write_report

    result = write_report(run_dir, out, AnalysisOptions(seed=seed))
    typer.echo(result.headline)
    for note in result.skipped:
        typer.echo(f"skipped: {note}")
    typer.echo(f"report: {result.html}")


DEMO_EXAMPLES = """
Examples:

  latentcot demo

  latentcot demo --out runs/demo --limit 200
"""


@app.command(epilog=DEMO_EXAMPLES)
def demo(
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Demo directory, one run per model (default runs/demo-<date>-<time>)."
    ),
    limit: int = typer.Option(100, "--limit", "-n", min=1, help="Test examples per model."),
    batch_size: int = typer.Option(100, min=1, help="Examples decoded together."),
    max_new_tokens: int | None = typer.Option(
        None,
        min=1,
        help="Generated positions per example (default: 1.5 × each model's longest gold solution + its latents + 8).",
    ),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted demo directory."),
) -> None:
    """The embedded default: built-in models on their tasks, threshold sweeps, measurements, report."""
    from datetime import datetime

    from latentcot import demo as demos
    from latentcot.analysis import write_report
    from latentcot.experiment import execute
    from latentcot.zoo.registry import list_models

    cfg = demos.DemoConfig(limit=limit, batch_size=batch_size, max_new_tokens=max_new_tokens, device=device)
    plans = [(m.name, demos.demo_plan(m, cfg)) for m in demos.demo_models(list_models())]
    root = out if out is not None else Path("runs") / f"demo-{datetime.now():%Y%m%d-%H%M%S}"
    reports = []
    for name, plan in plans:
        typer.echo(f"== builtin:{name} on {plan.tasks[0]}")
        run_dir = execute(plan, root / name, resume=resume, argv=sys.argv, echo=lambda _: None)
        reports.append((name, write_report(run_dir)))
    for name, report in reports:
        typer.echo(f"\n== builtin:{name}\n{report.headline}")
    overview = demos.overview_of([(name, report.overview) for name, report in reports])
    overview.to_csv(root / "overview.csv", index=False)
    typer.echo(f"\n== per model and domain (overview.csv)\n{demos.overview_text(overview)}\n")
    for name, report in reports:
        typer.echo(f"report ({name}): {report.html}")


@app.command(
    "tasks",
    epilog="Example:\n\n  latentcot tasks\n\n  latentcot run --model M --task addition:n=8,digits=3 --task prosqa:hops=4",
)
def list_tasks_command() -> None:
    """List the registered tasks with their domain and a one-line description."""
    from latentcot.tasks import list_tasks

    rows = list_tasks()
    width = max(len(name) for name, _, _ in rows)
    for name, domain, description in rows:
        typer.echo(f"{name:<{width}}  {domain:<11}  {description}")


@app.command(
    epilog="""
Examples:

  latentcot train --task addition:n=4,digits=2,reverse=1 --method cot --out models/add-cot --steps 3000

  latentcot train --task addition:n=4,digits=2,reverse=1 --method coconut --init models/add-cot --out models/add-coconut --steps 1000 --mix-prob 0.3

  latentcot train --task addition:n=4,digits=2,reverse=1 --method cot --out models/add-cot --resume

  latentcot run --model models/add-coconut --prompt models/add-coconut/prompt.json --task addition:n=4,digits=2,reverse=1 --gate fixed --k 3 --markers "<bot>,<eot>"
"""
)
@train_options
def train(
    ctx: typer.Context,
    cfg: TrainConfig,
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Model directory (default $LATENTCOT_HOME/models/<task>-<method>)."
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue from the directory's last checkpoint, given the same "
        "options (--steps, --device and --save-dtype may change).",
    ),
) -> None:
    """Train a small model on a task (cot, nocot, COCONUT or soft inputs); write weights, prompt.json, train_log.jsonl, card.json."""
    from latentcot.zoo.train import default_out
    from latentcot.zoo.train import train as train_model

    target = out or default_out(cfg)
    card = train_model(cfg, target, resume=resume, argv=typed_command(ctx))
    typer.echo(f"{target}: test accuracy {card['test_accuracy']:.1%} on {card['test_examples']} examples")


@app.command(
    "models",
    epilog="Example:\n\n  latentcot models\n\n  latentcot run --model builtin:NAME --task addition --gate token",
)
def list_models_command() -> None:
    """List the zoo: built-in models and the ones you trained ($LATENTCOT_HOME/models), with their status."""
    from latentcot.zoo.registry import BUILTIN_ROOT, list_models, user_root

    models = list_models()
    if not models:
        typer.echo(
            f"no models yet: built-in ones ship in {BUILTIN_ROOT}; `latentcot train` adds yours to {user_root()}"
        )
        return
    rows = [
        (
            f"builtin:{m.name}",
            m.origin,
            str(m.card.get("task", "?")),
            str(m.card.get("method", "?")),
            _accuracy_text(m.card),
            m.budget,
            m.status,
        )
        for m in models
    ]
    header = ("model", "origin", "task", "method", "test acc", "trained (steps × batch)", "status")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _accuracy_text(card: dict) -> str:
    accuracy, n = card.get("test_accuracy"), card.get("test_examples")
    if not isinstance(accuracy, (int, float)):
        return "-"
    return f"{accuracy:.1%}" + (f" (n={n})" if n else "")


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input is one line on stderr and exit status 2, never a traceback."""
    try:
        code = app(args=argv, prog_name="latentcot", standalone_mode=False)
    except InputError as exc:
        typer.echo(f"latentcot: error: {exc}", err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        code = 130
    except TyperException as exc:  # usage errors: unknown option, a value of the wrong type, ...
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        typer.echo(f"latentcot: error: {' '.join(message.split())}", err=True)
        sys.exit(2)
    if code == 130:  # Ctrl-C, which click also turns into a returned 130 outside standalone mode
        typer.echo("latentcot: interrupted; every record written is kept (continue with --resume)", err=True)
    sys.exit(code if isinstance(code, int) else 0)
