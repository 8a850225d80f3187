"""An experiment: tasks × settings on one model, decoded in batches, scored, appended to a run.

``execute`` validates everything (tasks, examples, model) before the run directory is created,
so bad input leaves nothing behind; ``_decode_all`` is the resumable inner loop: work units of what
the run store lacks, decoded by an executor (latentcot.executors), every record appended here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from latentcot.backends import Backend, check_available, load_backend, unsupported
from latentcot.config import (
    BackendConfig,
    DecodeConfig,
    ExecutorConfig,
    GateConfig,
    LatentConfig,
    ModelConfig,
    setting_id,
    setting_of,
)
from latentcot.decoding import single_tokens
from latentcot.errors import InputError
from latentcot.measure import MEASUREMENTS
from latentcot.methods import THOUGHT_MARKERS, MethodChoice, method_params
from latentcot.rollout import parse_rollout
from latentcot.store import RunStore, read_samples
from latentcot.tasks.base import SPLITS
from latentcot.types import Example, SampleRecord, Trace


@dataclass(frozen=True)
class Setting:
    gate: GateConfig
    latent: LatentConfig
    decode: DecodeConfig
    method: MethodChoice | None = None  # the named method this setting was resolved from (--method)

    @classmethod
    def of_method(cls, choice: MethodChoice, decode: DecodeConfig) -> Setting:
        gate, latent = choice.configs()
        markers = choice.markers()
        if markers not in (None, "auto") and decode.markers is None:  # "none", or the given pair
            pair = tuple(s.strip() for s in markers.split(","))
            decode = dataclasses.replace(decode, markers=None if markers == "none" else pair)
        return cls(gate, latent, decode, choice)

    def with_model_markers(self, tokenizer) -> Setting:
        """A method asking for the model's own thought markers ("auto") gets the first pair that is
        single tokens of ``tokenizer``; otherwise it decodes without markers."""
        if self.method is None or self.method.markers() != "auto" or self.decode.markers is not None:
            return self
        pair = next((pair for pair in THOUGHT_MARKERS if single_tokens(tokenizer, pair)), None)
        return dataclasses.replace(self, decode=dataclasses.replace(self.decode, markers=pair)) if pair else self

    @property
    def id(self) -> str:
        return setting_id(self.gate, self.latent, self.decode)

    def as_dict(self) -> dict:
        """The record's ``setting``; with a method also its name and every resolved parameter (settings
        given as --gate/--latent keep their earlier form, so their runs still resume)."""
        method = method_params(self.method) if self.method is not None else {}
        return {**setting_of(self.gate, self.latent, self.decode), **method}


def make_record(task, example: Example, setting: Setting, trace: Trace) -> SampleRecord:
    extraction = task.extract(trace.completion)
    return SampleRecord(
        setting=setting.as_dict(),
        setting_id=setting.id,
        task=task.name,
        task_spec=task.spec,
        domain=example.domain or task.domain,
        example_id=example.id,
        prompt=trace.prompt,
        completion=trace.completion,
        answer=example.answer,
        prediction=extraction.prediction,
        correct=bool(task.score(example, extraction.prediction)),
        n_steps=trace.n_steps,
        n_latent=trace.n_latent,
        steps=trace.steps(),
        extraction=extraction.strategy,
        finish_reason=trace.finish_reason,
    )


class Progress:
    """One progress bar for a run: samples done (with ETA), settings done, generated steps per second."""

    def __init__(self, total: int, done: int, settings_total: int, settings_done: int):
        from tqdm import tqdm

        self._bar = tqdm(total=total, initial=done, desc="samples", unit="ex", dynamic_ncols=True)
        self._settings = [settings_done, settings_total]
        self._steps, self._started = 0, time.perf_counter()
        self._show()

    def _show(self) -> None:
        rate = self._steps / max(time.perf_counter() - self._started, 1e-9)
        self._bar.set_postfix_str(f"settings {self._settings[0]}/{self._settings[1]}, {rate:.0f} steps/s")

    def batch(self, rows: int, steps: int) -> None:
        self._steps += steps
        self._bar.update(rows)
        self._show()

    def setting_done(self) -> None:
        self._settings[0] += 1
        self._show()

    def close(self) -> None:
        self._bar.close()


@dataclass
class DecodeCost:
    """What decoding cost, in rows computed by forwards (prefill counts one row per prompt)."""

    forward_rows: int = 0  # computed
    separate_rows: int = 0  # what decoding every (example, setting) on its own computes: its n_steps
    plain_rows: int = 0  # what one tree of the settings computes without rollout branches
    trajectories: int = 0  # distinct trajectories decoded
    records: int = 0

    def add(self, result) -> None:
        """Count one decoded work unit (``executors.UnitResult``)."""
        self.forward_rows += result.forward_rows
        self.separate_rows += result.separate_rows
        self.plain_rows += result.plain_rows
        self.trajectories += result.trajectories
        self.records += result.traces

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ratio": round(self.forward_rows / max(self.separate_rows, 1), 4)}

    def rollout_line(self) -> str:
        return (
            f"rollout: {self.forward_rows} forward rows with the answer-level branches, "
            f"{self.forward_rows / max(self.plain_rows, 1):.2f}x the {self.plain_rows} of the run without them"
        )

    def line(self) -> str:
        return (
            f"decode cost: {self.forward_rows} forward rows for {self.records} records ({self.trajectories} distinct "
            f"trajectories); decoding each setting on its own: {self.separate_rows} ({self.as_dict()['ratio']:.2f}x)"
        )


@dataclass(frozen=True)
class Plan:
    """Everything that determines a run's records (the manifest's ``config``)."""

    model: ModelConfig
    tasks: tuple[str, ...]  # task specs: registered names (with parameters) or files
    settings: tuple[Setting, ...]
    split: str = "test"
    limit: int | None = None  # examples per task
    batch_size: int = 16
    seed: int = 0
    prompt_file: str | None = None
    measure: tuple[str, ...] = ()  # extra per-step measurements (see MEASUREMENTS)
    backend: BackendConfig = BackendConfig()  # which engine decodes (records do not depend on it)

    def __post_init__(self):
        for spec in self.measure:
            name, _, params = spec.partition(":")
            if name not in MEASUREMENTS or (params and name != "rollout"):
                raise InputError(f"unknown measurement {spec!r}; valid: counterfactual, rollout[:every=K,max=M,...]")
        parse_rollout(self.measure)  # its parameters, checked
        refusal = unsupported(self.backend, self.settings, self.measure, self.model)
        if refusal:
            raise InputError(refusal)
        if not self.settings:
            raise InputError("no decoding setting given")
        ids = [s.id for s in self.settings]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise InputError(f"two settings decode identically (setting id {twice[0]}); give each once")
        if self.split not in SPLITS:
            raise InputError(f"unknown split {self.split!r}; valid: {', '.join(SPLITS)}")
        if not self.tasks:
            raise InputError("no task given")
        if self.limit is not None and self.limit < 1:
            raise InputError(f"limit must be >= 1, got {self.limit}")
        if self.batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {self.batch_size}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-shaped (lists, not tuples), so it compares equal to a manifest read back from disk."""
        config = {**dataclasses.asdict(self), "settings": {s.id: s.as_dict() for s in self.settings}}
        return json.loads(json.dumps(config))


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _versions() -> dict[str, str]:
    import torch
    import transformers

    import latentcot

    return {
        "latentcot": latentcot.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def manifest(plan: Plan, model_identity: dict, argv: Sequence[str]) -> dict[str, Any]:
    return {
        "command": list(argv),
        "config": plan.as_dict(),
        "seed": plan.seed,
        "model": model_identity,
        "device": model_identity.get("device"),
        "versions": _versions(),
        "git_commit": _git_commit(),
        "host": platform.node(),
    }


def default_run_dir(plan: Plan, root: Path = Path("runs")) -> Path:
    digest = hashlib.sha256(json.dumps(plan.as_dict(), sort_keys=True, default=str).encode()).hexdigest()
    return root / f"{datetime.now():%Y%m%d-%H%M%S}-{digest[:6]}"


def load_examples(plan: Plan) -> list[tuple[Any, list[Example]]]:
    from latentcot.tasks import load_task

    loaded = []
    for spec in plan.tasks:
        task = load_task(spec, plan.prompt_file)
        examples = task.examples(plan.split, plan.limit, plan.seed)
        if not examples:
            raise InputError(f"task {spec} has no examples")
        loaded.append((task, examples))
    return loaded


def summarize(records: Sequence[dict]) -> list[dict[str, Any]]:
    """Accuracy and latent fraction per (task, setting), in first-seen order."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["task_spec"], r["setting_id"]), []).append(r)
    return [
        {
            "task": task,
            "setting": sid,
            "n": len(rs),
            "accuracy": sum(r["correct"] for r in rs) / len(rs),
            "latent_fraction": sum(r["n_latent"] for r in rs) / max(1, sum(r["n_steps"] for r in rs)),
            "mean_steps": sum(r["n_steps"] for r in rs) / len(rs),
        }
        for (task, sid), rs in groups.items()
    ]


def format_summary(rows: Sequence[dict[str, Any]]) -> str:
    head = f"{'task':<36} {'setting':<32} {'n':>5} {'accuracy':>9} {'latent':>7} {'steps':>7}"
    lines = [head] + [
        f"{r['task'][-36:]:<36} {r['setting'][:32]:<32} {r['n']:>5} {r['accuracy']:>9.3f} "
        f"{r['latent_fraction']:>7.3f} {r['mean_steps']:>7.1f}"
        for r in rows
    ]
    return "\n".join(lines)


def check_runnable(plan: Plan, tasks, engine: Backend) -> None:
    """Refuse, before anything is written, what would fail halfway through the run."""
    longest = max(s.decode.max_new_tokens for s in plan.settings)
    for setting in plan.settings:
        markers = setting.decode.markers
        if markers is not None and not single_tokens(engine.tokenizer, markers):
            raise InputError(f"--markers {','.join(markers)}: each must be a single token of the model's tokenizer")
        if markers is not None and parse_rollout(plan.measure) is not None:
            raise InputError(
                f"--measure rollout needs settings without thought markers ({setting.id} has {','.join(markers)}): "
                "a latent in place of a token would need a marker step first"
            )
    for task, examples in tasks:
        engine.check_room([task.prompt(e) for e in examples], longest, [f"{task.spec} {e.id}" for e in examples])
        for setting in plan.settings:
            engine.check_loop(setting.decode)
            for example in examples:
                setting.gate.for_domain(example.domain or task.domain)


MODEL_PROMPT = "prompt.json"  # a model directory may ship the prompt template it was trained with


def with_model_prompt(plan: Plan) -> Plan:
    """Use the model directory's own prompt template (zoo models are trained on one format) unless
    a prompt file was given; the manifest then records which file was used."""
    from latentcot.model import resolve_source

    if plan.prompt_file is not None:
        return plan
    source, is_local = resolve_source(plan.model.model)
    shipped = Path(source) / MODEL_PROMPT
    return dataclasses.replace(plan, prompt_file=str(shipped)) if is_local and shipped.is_file() else plan


def _decode_all(plan: Plan, tasks, store: RunStore, runner, families, cost) -> None:
    """Every (task, example, setting) not yet in ``store``, as work units on ``runner`` (an executor);
    this process appends every record (the only writer)."""
    from latentcot.executors import make_units

    done = store.done_keys()
    missing = {
        (task.spec, s.id): sum((task.spec, s.id, e.id) not in done for e in examples)
        for task, examples in tasks
        for s in plan.settings
    }
    total = sum(len(examples) for _, examples in tasks) * len(plan.settings)
    progress = Progress(total, len(done), len(missing), sum(n == 0 for n in missing.values()))
    units = make_units(tasks, plan.settings, families, done, plan.batch_size)
    try:
        for result in runner.run(units):
            for record in result.records:
                store.append(record)
                key = (record["task_spec"], record["setting_id"])
                missing[key] -= 1
                if missing[key] == 0:
                    progress.setting_done()
            cost.add(result)
            progress.batch(len(result.records), result.separate_rows)
    finally:
        progress.close()


def _start(plan: Plan, tasks, executor: ExecutorConfig, share: bool, max_rows: int | None):
    """(plan with the model's markers, the executor's runner, setting families, the model's identity), the
    plan checked against the loaded model. Locally the model loads here; on Ray only its config and
    tokenizer do, and the first worker (which loads it anyway) checks the plan and reports the identity,
    so the driver never holds a copy of the weights (nor a GPU) of its own."""
    from latentcot.executors import LocalExecutor, RayExecutor, Worker, setting_families

    def prepared(tokenizer) -> tuple[Plan, list[tuple[int, ...]], int]:
        settings = tuple(s.with_model_markers(tokenizer) for s in plan.settings)
        families = setting_families(settings, share and plan.backend.name == "hf")  # vLLM decodes no trees
        rows = max_rows if max_rows is not None else 4 * plan.batch_size
        return dataclasses.replace(plan, settings=settings), families, rows

    if executor.kind == "ray":
        from latentcot.model import check_causal, model_tokenizer

        source, _, _ = check_causal(plan.model)  # a wrong model id or path: one line, before any worker starts
        ready, families, rows = prepared(model_tokenizer(plan.model, source))
        runner = RayExecutor(executor, ready, families, rows)
        try:
            identity = runner.describe()
        except BaseException:
            runner.close()
            raise
        return ready, runner, families, identity
    loaded = load_backend(plan.model, plan.backend)
    ready, families, rows = prepared(loaded.engine.tokenizer)
    check_runnable(ready, tasks, loaded.engine)
    worker = Worker(loaded.engine, tasks, ready.settings, families, seed=ready.seed, measure=ready.measure,
                    max_rows=rows)  # fmt: skip
    return ready, LocalExecutor(worker), families, loaded.identity


def execute(
    plan: Plan,
    out: Path | None,
    *,
    resume: bool = False,
    wait: bool = False,
    argv: Sequence[str] = (),
    echo: Callable[[str], None] = print,
    share: bool = True,
    max_rows: int | None = None,
    executor: ExecutorConfig = ExecutorConfig(),
) -> Path:
    """Run ``plan`` into ``out`` (or a new directory under runs/); returns the run directory. ``wait``: for
    another process writing ``out`` to finish (else refuse). ``share``:
    decode settings as prefix-shared trees (records are the same either way); ``max_rows``: live rows
    of a tree (default 4 x the batch size); ``executor``: where the work units run (this process, or Ray
    actors), the records being the same."""
    plan = with_model_prompt(plan)
    tasks = load_examples(plan)
    out = out if out is not None else default_run_dir(plan)
    RunStore.check(out, resume, wait)  # before the slow model load
    check_available(plan.backend)
    if executor.kind == "ray" and importlib.util.find_spec("ray") is None:
        raise InputError("--executor ray needs Ray: pip install 'latentcot[ray]'")
    plan, runner, families, identity = _start(plan, tasks, executor, share, max_rows)
    cost = DecodeCost()
    try:
        with RunStore.open(out, manifest(plan, identity, argv), resume=resume, wait=wait, on_wait=echo) as store:
            store.manifest = {**store.manifest, "executor": executor.as_dict()}
            try:
                _decode_all(plan, tasks, store, runner, families, cost)
            finally:
                store.manifest = {**store.manifest, "decode_cost": {"shared": share, **cost.as_dict()}}
    finally:
        runner.close()
    echo(format_summary(summarize(read_samples(out))))
    if cost.records and len(plan.settings) > 1:  # a sweep: what sharing saved
        echo(cost.line())
    if cost.records and parse_rollout(plan.measure) is not None:
        echo(cost.rollout_line())
    echo(f"records: {out / 'samples.jsonl'}")
    return out
