"""The ``latentcot`` command. Each command only wires options -> configs -> objects -> store."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from typer.exceptions import TyperException

from latentcot.errors import InputError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compare latent and token chain of thought in causal language models.")

RUN_EXAMPLES = """
Examples:

  latentcot run --model ./my-model --task data.jsonl --gate entropy --threshold 1.5 --latent soft --out runs/soft-1.5

  latentcot run --model Qwen/Qwen2.5-0.5B --task gsm8k_test.jsonl --gate token --limit 100 --device cuda --out runs/qwen-cot
"""


@app.command(epilog=RUN_EXAMPLES)
def run(
    model: str = typer.Option(..., "--model", "-m", help="HF hub id, local save_pretrained directory, or builtin:NAME."),
    task: List[str] = typer.Option(..., "--task", "-t", help="Registered task (name or name:key=value,...) or a .json/.jsonl file; repeat for several."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default runs/<date>-<time>-<hash>)."),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", min=1, help="Examples per task."),
    split: str = typer.Option("test", help="Split of a generated task: train, valid or test."),
    gate: str = typer.Option("token", help="token | latent | entropy | fixed."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Entropy gate: latent when H > threshold."),
    unit: str = typer.Option("nats", help="Threshold unit: nats | bits | normalized (H / log V)."),
    k: Optional[int] = typer.Option(None, "--k", help="Fixed gate: number of leading latent steps."),
    max_consecutive: Optional[int] = typer.Option(None, help="Entropy gate: at most this many latent steps in a row."),
    max_latent: Optional[int] = typer.Option(None, help="Entropy gate: at most this many latent steps per sequence."),
    latent: str = typer.Option("hidden", help="Latent mode: hidden | hidden-normed | soft | topk-soft."),
    latent_temperature: float = typer.Option(1.0, help="Soft latent modes: softmax temperature of the mixture."),
    latent_top_k: int = typer.Option(8, help="topk-soft: number of token embeddings mixed."),
    markers: Optional[str] = typer.Option(None, help="Begin,end thought tokens fed around latent segments, e.g. '<bot>,<eot>'."),
    temperature: float = typer.Option(0.0, help="Sampling temperature; 0 = greedy."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass."),
    top_k: int = typer.Option(0, help="Sample among the k most likely tokens (0 = all)."),
    max_new_tokens: int = typer.Option(128, help="Generated positions per example (tokens, latents, markers)."),
    stop: List[str] = typer.Option([], "--stop", help="Stop string; repeat for several."),
    batch_size: int = typer.Option(16, min=1, help="Examples decoded together."),
    seed: int = typer.Option(0, help="Run seed; each example's sampling seed derives from it and the example id."),
    resume: bool = typer.Option(False, "--resume", help="Continue a run directory, skipping recorded samples."),
    prompt: Optional[Path] = typer.Option(None, "--prompt", help="Prompt template file overriding the task's."),
    tokenizer: Optional[str] = typer.Option(None, help="Tokenizer id or directory, when the model's own is missing."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    dtype: str = typer.Option("auto", help="auto | float32 | bfloat16 | float16."),
    trust_remote_code: bool = typer.Option(False, help="Allow code shipped with a hub checkpoint to run."),
) -> None:
    """Decode task examples under one gate and latent mode; append one record per example to samples.jsonl."""
    from transformers.utils import logging as hf_logging

    from latentcot import experiment
    from latentcot.config import DecodeConfig, GateConfig, LatentConfig, ModelConfig

    hf_logging.disable_progress_bar()  # the run has its own progress bar; keep stderr readable

    marker_pair = tuple(markers.split(",")) if markers else None
    setting = experiment.Setting(
        GateConfig(gate, threshold, unit, max_consecutive, max_latent, k),
        LatentConfig(latent, latent_temperature, latent_top_k),
        DecodeConfig(max_new_tokens, temperature, top_p, top_k, tuple(stop), marker_pair),
    )
    model_cfg = ModelConfig(model, tokenizer=tokenizer, dtype=dtype, device=device,
                            trust_remote_code=trust_remote_code)
    plan = experiment.Plan(model=model_cfg, tasks=tuple(task), settings=(setting,), split=split, limit=limit,
                           batch_size=batch_size, seed=seed, prompt_file=str(prompt) if prompt else None)
    experiment.execute(plan, out, resume=resume, argv=sys.argv)


@app.command("tasks")
def list_tasks_command() -> None:
    """List the registered tasks with their domain and a one-line description."""
    from latentcot.tasks import list_tasks

    rows = list_tasks()
    width = max(len(name) for name, _, _ in rows)
    for name, domain, description in rows:
        typer.echo(f"{name:<{width}}  {domain:<11}  {description}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input is one line on stderr and exit status 2, never a traceback."""
    try:
        code = app(args=argv, prog_name="latentcot", standalone_mode=False)
    except InputError as exc:
        typer.echo(f"latentcot: error: {exc}", err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("latentcot: interrupted", err=True)
        sys.exit(130)
    except TyperException as exc:  # usage errors: unknown option, a value of the wrong type, ...
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        typer.echo(f"latentcot: error: {' '.join(message.split())}", err=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)
