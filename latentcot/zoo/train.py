"""Train a zoo model: ``cot`` (steps then answer), ``nocot`` (answer only), ``coconut`` (latent curriculum),
``soft`` (cot fed soft inputs at its uncertain steps, see :func:`latentcot.zoo.forward.soft_inputs`).

Fresh examples from the task's train split every step; a dataset file's examples are instead
reshuffled each epoch. Either way the data of step t is a pure function of (seed, t), so a resumed
run sees exactly the batches an uninterrupted one would. Valid and test examples come from
``eval_task`` when one is given (a file's held-out split), else from the task itself. Validation
accuracy is measured with greedy decoding through the real :class:`latentcot.engine.Engine`,
with the same gate, latent mode and markers that ``latentcot run`` would use on the saved model.

The run's settings are a :class:`latentcot.zoo.data.TrainConfig` (also importable from here).
Every input (the task and its train/valid/test examples, the ``init`` model, the device) is read
and checked before anything is written, so a refused command leaves the output directory as it
was and can be rerun once its input is fixed. Models are read through :mod:`latentcot.model`
(its one-line errors); this module only builds new ones and saves what it trained.

Output directory: HF ``save_pretrained`` files, the tokenizer, ``prompt.json`` (the template the
model was trained with), ``train_log.jsonl`` (one line per evaluation), ``checkpoint.pt``
(model, optimizer, step, RNG: what ``resume`` continues from) and finally ``card.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM

from latentcot.config import DecodeConfig, GateConfig, LatentConfig, ModelConfig
from latentcot.engine import Engine
from latentcot.gates import make_gate
from latentcot.latent import make_latent
from latentcot.looping import LoopConfig
from latentcot.model import load_model, load_tokenizer
from latentcot.tasks import Task, load_task
from latentcot.tasks.files import FileTask
from latentcot.types import Example
from latentcot.validation import from_mapping, require
from latentcot.zoo.data import ANSWER_PREFIX, PROMPT_FILE, Layout, TrainConfig, encode, write_prompt_file
from latentcot.zoo.forward import loss_of
from latentcot.zoo.looped import is_looped, training_loops
from latentcot.zoo.registry import user_root
from latentcot.zoo.tiny import tiny_config
from latentcot.zoo.tokenizer import SCAN_EXAMPLES, task_tokenizer, texts_of

CHECKPOINT = "checkpoint.pt"
LOG = "train_log.jsonl"
SHAPE_FIELDS = ("arch", "hidden", "layers", "heads")
INIT_FIELDS = (*SHAPE_FIELDS, "tokenizer")  # what a coconut model inherits from its init model
DROPOUT_FIELDS = ("resid_pdrop", "embd_pdrop", "attn_pdrop", "attention_dropout", "hidden_dropout")
# What --resume takes from the command rather than from the saved run: none of them changes the
# steps already taken (steps may grow; the device and the dtype of the final weights are free).
APPLIED_ON_RESUME = ("steps", "device", "save_dtype")


def learning_rate(cfg: TrainConfig, within: int) -> float:
    """The lr at step ``within`` of a stage: linear warm-up, then constant or cosine decay to 10 %."""
    scale = min(1.0, (within + 1) / max(1, cfg.warmup))
    if cfg.decay == "cosine":
        progress = min(1.0, within / max(1, cfg.steps))
        scale *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr * scale


def default_out(cfg: TrainConfig) -> Path:
    """``$LATENTCOT_HOME/models/<task>-<method>``, e.g. ``addition-n4-digits2-reverse1-cot``."""
    name = cfg.task.replace(":", "-").replace("=", "").replace(",", "-").replace("/", "-")
    return user_root() / f"{name}-{cfg.method}"


def _new_model(cfg: TrainConfig, tokenizer):
    config = tiny_config(
        cfg.arch,
        len(tokenizer),
        hidden=cfg.hidden,
        layers=cfg.layers,
        heads=cfg.heads,
        pad_id=tokenizer.pad_token_id,
        bos_id=tokenizer.bos_token_id,
        eos_id=tokenizer.eos_token_id,
    )
    for name in DROPOUT_FIELDS:
        if hasattr(config, name):
            setattr(config, name, cfg.dropout)
    with torch.random.fork_rng(devices=[]):  # seeded init that leaves the caller's RNG alone
        torch.manual_seed(cfg.seed)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def _shape_of(config) -> dict:
    """TrainConfig's shape fields read back from an HF config (gpt2 and llama-style names)."""
    get = lambda *names: next(getattr(config, n) for n in names if hasattr(config, n))  # noqa: E731
    return {
        "arch": config.model_type,
        "hidden": get("hidden_size", "n_embd"),
        "layers": get("num_hidden_layers", "n_layer"),
        "heads": get("num_attention_heads", "n_head"),
    }


def _tokenizer_kind(model_dir: Path) -> str:
    """The tokenizer kind a zoo model was trained with (its card's config; char for older cards)."""
    card = model_dir / "card.json"
    config = json.loads(card.read_text(encoding="utf-8")).get("config", {}) if card.is_file() else {}
    return config.get("tokenizer", "char")


def _check_device(device: str) -> None:
    """Refuse a CUDA device this machine does not have, before anything is written."""
    if device.startswith("cuda"):
        require(torch.cuda.is_available(), f"device {device} was asked for but no CUDA device is available")
        index, count = int(device.partition(":")[2] or 0), torch.cuda.device_count()
        require(index < count, f"device {device} does not exist: this machine has {count} CUDA device(s)")


def _check_init(init: Path) -> None:
    require(
        (init / "config.json").is_file() and (init / PROMPT_FILE).is_file(),
        f"--init {init} is not a trained zoo model (needs config.json and {PROMPT_FILE})",
    )


def _load_task(spec: str, cfg: TrainConfig, out: Path, resume: bool) -> Task:
    """Task ``spec``, prompted with the template the model is (or was) trained with; reads, never writes."""
    if resume:
        return load_task(spec, str(out / PROMPT_FILE))
    if cfg.init is not None:
        return load_task(spec, str(Path(cfg.init) / PROMPT_FILE))
    with tempfile.TemporaryDirectory() as scratch:  # load_task takes a template from a file only
        return load_task(spec, str(write_prompt_file(Path(scratch))))


def _check_vocabulary(tokenizer, task: Task, examples: list[Example], whose: str) -> None:
    """The tokenizer must be able to read and write ``examples``: an init model's (trained on another
    task, a curriculum) and a new one built from the train task, facing a separate eval task. A piece
    it lacks would become ``<unk>`` and train or score silently on garbage."""
    for example in examples:
        for text in texts_of(task, [example], ANSWER_PREFIX):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            require(
                tokenizer.unk_token_id not in ids,
                f"{whose} cannot write {task.spec!r} (unknown pieces in {text[:60]!r})",
            )


def _read_tokenizer(model_dir: Path):
    return load_tokenizer(str(model_dir), ModelConfig(str(model_dir)))


def _train_examples(cfg: TrainConfig, task: Task, step: int) -> list[Example]:
    """The batch of step ``step``: a pure function of (seed, step), so a resumed run draws the same.
    A generator makes fresh examples; a file's are walked in an order reshuffled every epoch."""
    if not isinstance(task, FileTask):
        return task.examples("train", cfg.batch_size, seed=cfg.seed * 1_000_003 + step)
    examples = task.examples("train", None, cfg.seed)
    return [examples[i] for i in epoch_order(len(examples), cfg.seed, step * cfg.batch_size, cfg.batch_size)]


def epoch_order(n: int, seed: int, start: int, count: int) -> list[int]:
    """Items ``start .. start + count`` of the endless sequence of permutations of ``range(n)``, one
    permutation per epoch, seeded by (seed, epoch): every example once per epoch, in a new order."""
    indices: list[int] = []
    for position in range(start, start + count):
        epoch, within = divmod(position, n)
        if within == 0 or not indices:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        indices.append(int(order[within]))
    return indices


def _check_examples(cfg: TrainConfig, task: Task, eval_task: Task) -> list[Example]:
    """The valid examples. A train batch and the test examples are drawn too (cheap and deterministic),
    so a task that cannot fill a split is refused before anything is written."""
    _train_examples(cfg, task, 0)
    eval_task.examples("test", cfg.test_examples, cfg.seed)
    return eval_task.examples("valid", cfg.eval_examples, cfg.seed)


def _write_start(cfg: TrainConfig, out: Path, tokenizer) -> None:
    """A fresh run's first files: the prompt template (an init model's own) and the tokenizer."""
    out.mkdir(parents=True, exist_ok=True)
    if cfg.init is not None:
        shutil.copy(Path(cfg.init) / PROMPT_FILE, out / PROMPT_FILE)
    else:
        write_prompt_file(out)
    tokenizer.save_pretrained(out)


def _prepare(cfg: TrainConfig, out: Path, resume: bool):
    """(cfg, model, tokenizer, task, eval task, valid examples) ready to train, with ``cfg`` resolved (an init
    model's shape and tokenizer, coconut's last stage). Every input is read and checked first; only
    then does a fresh start write prompt.json and the tokenizer, so a refused command writes nothing."""
    _check_device(cfg.device)
    if cfg.init is not None:
        _check_init(Path(cfg.init))
    task = _load_task(cfg.task, cfg, out, resume)
    eval_task = task if cfg.eval_task is None else _load_task(cfg.eval_task, cfg, out, resume)
    if cfg.init is not None:
        init = load_model(ModelConfig(cfg.init, device="cpu", dtype="float32"))
        model, tokenizer = init.model, init.tokenizer
        # record the shape actually trained, not the defaults that an init model overrides
        cfg = dataclasses.replace(cfg, **_shape_of(model.config), tokenizer=_tokenizer_kind(Path(cfg.init)))
    else:
        # a file's every example is scanned (a piece only its later examples use would be <unk>)
        scan = None if isinstance(task, FileTask) else SCAN_EXAMPLES
        tokenizer = _read_tokenizer(out) if resume else task_tokenizer(task, ANSWER_PREFIX, scan, kind=cfg.tokenizer)
        model = _new_model(cfg, tokenizer)
    if cfg.method == "coconut" and cfg.max_stage is None:
        steps_per_example = len(task.examples("train", 1, cfg.seed)[0].steps)
        cfg = dataclasses.replace(cfg, max_stage=max(1, steps_per_example))
    valid = _check_examples(cfg, task, eval_task)
    if cfg.init is not None:
        _check_vocabulary(tokenizer, task, _train_examples(cfg, task, 0), f"--init {cfg.init}: its tokenizer")
    if cfg.init is not None or cfg.eval_task is not None:
        whose = f"--init {cfg.init}: its tokenizer" if cfg.init else f"the tokenizer built from {cfg.task!r}"
        _check_vocabulary(tokenizer, eval_task, valid, whose)
    if not resume:
        _write_start(cfg, out, tokenizer)
    # Read back what was written, so a fresh run and a resumed one tokenize with the very same files.
    tokenizer = _read_tokenizer(out)
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    return cfg, model.to(device=cfg.device, dtype=dtype), tokenizer, task, eval_task, valid


def evaluate(model, tokenizer, task, examples, decode: dict, batch_size: int = 100) -> float:
    """Greedy accuracy on ``examples`` through the engine, decoded as ``decode`` says."""
    was_training = model.training
    model.eval()
    gate = make_gate(GateConfig(decode["gate"], k=decode.get("k"), threshold=decode.get("threshold")))
    latent = make_latent(LatentConfig(decode.get("latent", "hidden")))
    longest = max(len(tokenizer(Layout("cot").completion(e))["input_ids"]) for e in examples)
    cfg = DecodeConfig(
        max_new_tokens=longest + decode.get("k", 0) + 8,
        stop=task.stop,
        markers=tuple(decode["markers"]) if decode.get("markers") else None,
    )
    engine, correct = Engine(model, tokenizer), 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        traces = engine.generate([task.prompt(e) for e in chunk], gate, latent, cfg, seed=0)
        correct += sum(task.score(e, task.extract(t.completion).prediction) for e, t in zip(chunk, traces))
    model.train(was_training)
    return correct / len(examples)


def _stage_of(cfg: TrainConfig, step: int) -> int:
    return cfg.stages[min(step // cfg.steps, len(cfg.stages) - 1)]


def _batch_stage(cfg: TrainConfig, step: int, stage: int) -> int:
    """The stage this step's batch is laid out in: ``stage``, or with mix_prob an earlier one."""
    earlier = [s for s in cfg.stages if s < stage]
    if not earlier or cfg.mix_prob == 0:
        return stage
    rng = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    if torch.rand((), generator=rng).item() >= cfg.mix_prob:
        return stage
    return earlier[int(torch.randint(len(earlier), (), generator=rng))]


def _optimizer(cfg: TrainConfig, model) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))


def _check_out(cfg: TrainConfig, out: Path, resume: bool) -> TrainConfig:
    """The config to train with: ``cfg``, or on resume the saved one with APPLIED_ON_RESUME taken
    from ``cfg``; any other setting that differs from the saved run is refused, never ignored."""
    if not resume:
        require(
            not out.exists() or (out.is_dir() and not any(out.iterdir())),
            f"output directory {out} is not empty (pass --resume to continue it)",
        )
        return cfg
    require((out / CHECKPOINT).is_file(), f"nothing to resume: {out / CHECKPOINT} does not exist")
    saved = from_mapping(TrainConfig, torch.load(out / CHECKPOINT, weights_only=False, map_location="cpu")["config"])
    # What the command leaves open stands for the saved run's resolved value: max_stage None (the
    # task's step count) and, with an init model, the init's shape and tokenizer.
    inherited = (() if cfg.max_stage is not None else ("max_stage",)) + (INIT_FIELDS if cfg.init else ())
    differ = [
        f.name
        for f in dataclasses.fields(cfg)
        if f.name not in APPLIED_ON_RESUME + inherited and getattr(cfg, f.name) != getattr(saved, f.name)
    ]
    require(not differ, f"--resume with settings that differ from the saved run: {', '.join(differ)}")
    return dataclasses.replace(saved, **{name: getattr(cfg, name) for name in APPLIED_ON_RESUME})


def train(
    cfg: TrainConfig,
    out: Path,
    *,
    resume: bool = False,
    argv: Sequence[str] | None = None,
    until_step: int | None = None,
    progress: bool = True,
) -> dict:
    """Train, log, checkpoint, test; returns the card (None-free dict). ``until_step`` stops early
    after checkpointing, as an interruption would (``resume`` continues from there)."""
    out = Path(out).expanduser()
    cfg = _check_out(cfg, out, resume)
    cfg, model, tokenizer, task, eval_task, valid = _prepare(cfg, out, resume)
    optimizer, step, seconds = _optimizer(cfg, model), 0, 0.0
    if resume:
        state = torch.load(out / CHECKPOINT, weights_only=False, map_location=cfg.device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, seconds = state["step"], state["seconds"]
        torch.set_rng_state(state["rng"])
    model.train()
    started, losses = time.monotonic() - seconds, []
    bar = tqdm(total=cfg.total_steps, initial=step, disable=not progress, desc=f"train {cfg.method}", unit="step")
    stop_at = cfg.total_steps if until_step is None else min(until_step, cfg.total_steps)
    while step < stop_at:
        stage = _stage_of(cfg, step)
        within = step - cfg.stages.index(stage) * cfg.steps  # steps already taken in this stage
        if within == 0 and step > 0 and cfg.reset_optimizer:
            optimizer = _optimizer(cfg, model)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, within)
        examples = _train_examples(cfg, task, step)
        batch = encode(
            tokenizer, [task.prompt(e) for e in examples], examples, cfg.layout(_batch_stage(cfg, step, stage))
        ).to(cfg.device)
        # a looped model may draw its loop count per step (seeded by step, so resume draws the same)
        looping = {"looping": LoopConfig(training_loops(model.config, cfg.seed, step))} if is_looped(model) else {}
        soft = {"soft_above": cfg.soft_threshold} if cfg.method == "soft" else {}
        loss = loss_of(model, batch, **soft, **looping)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        step += 1
        bar.update(1)
        bar.set_postfix(stage=stage, loss=f"{losses[-1]:.3f}")
        stage_done = step % cfg.steps == 0 or step == cfg.total_steps
        if step % cfg.eval_every == 0 or stage_done or step == stop_at:
            accuracy = evaluate(model, tokenizer, eval_task, valid, cfg.decode(stage))
            seconds = time.monotonic() - started
            line = {
                "step": step,
                "stage": stage,
                "loss": sum(losses) / len(losses),
                "valid_accuracy": accuracy,
                "valid_examples": len(valid),
                "seconds": round(seconds, 1),
            }
            with open(out / LOG, "a", encoding="utf-8") as log:
                log.write(json.dumps(line) + "\n")
            bar.write(f"step {step} stage {stage}: loss {line['loss']:.4f} valid accuracy {accuracy:.1%}")
            losses = []
            _save_checkpoint(out, cfg, model, optimizer, step, stage, seconds)
    bar.close()
    if step < cfg.total_steps:
        return {}
    return _finish(cfg, out, model, tokenizer, task, eval_task, seconds, argv)


def resave(model_dir: Path, save_dtype: str) -> dict:
    """Store a trained zoo model's weights in ``save_dtype`` (e.g. float16: half the size), measure
    its test accuracy again on exactly those weights and rewrite its card, whose train command
    then names ``--save-dtype``: what the command would have produced directly."""
    model_dir = Path(model_dir)
    card = json.loads((model_dir / "card.json").read_text(encoding="utf-8"))
    cfg = from_mapping(TrainConfig, {**card["config"], "save_dtype": save_dtype, "device": "cpu"})
    loaded = load_model(ModelConfig(str(model_dir), device="cpu", dtype="float32"))
    task = load_task(cfg.task, str(model_dir / PROMPT_FILE))
    eval_task = task if cfg.eval_task is None else load_task(cfg.eval_task, str(model_dir / PROMPT_FILE))
    argv = [a for a in shlex.split(card["train_command"] or "") if a] + ["--save-dtype", save_dtype]
    return _finish(cfg, model_dir, loaded.model, loaded.tokenizer, task, eval_task, card["train_seconds"], argv)


def _save_checkpoint(out: Path, cfg: TrainConfig, model, optimizer, step: int, stage: int, seconds: float) -> None:
    state = {
        "config": dataclasses.asdict(cfg),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "stage": stage,
        "seconds": seconds,
        "rng": torch.get_rng_state(),
    }
    partial = out / (CHECKPOINT + ".partial")
    torch.save(state, partial)
    partial.replace(out / CHECKPOINT)  # atomic: a kill never leaves a torn checkpoint


def _finish(cfg: TrainConfig, out: Path, model, tokenizer, task, eval_task, seconds: float, argv) -> dict:
    """Test accuracy (on ``eval_task``'s test split), HF weights and the card."""
    decode = cfg.decode(cfg.stages[-1])
    test = eval_task.examples("test", cfg.test_examples, cfg.seed)
    saved = getattr(torch, cfg.save_dtype)  # float32 | float16 | bfloat16
    with torch.no_grad():  # round to the saved precision first, so the card describes the shipped weights
        for parameter in model.parameters():
            parameter.copy_(parameter.to(saved))
    accuracy = evaluate(model, tokenizer, eval_task, test, decode)
    model.to(saved).save_pretrained(out)
    card = {
        "task": task.spec,
        **({"eval_task": eval_task.spec} if cfg.eval_task is not None else {}),
        "method": cfg.method,
        "arch": model.config.model_type,
        "params": sum(p.numel() for p in model.parameters()),
        "test_accuracy": accuracy,
        "test_examples": len(test),
        "train_command": shlex.join(argv) if argv else None,
        "train_seconds": round(seconds, 1),
        "decode": decode,
        "prompt": PROMPT_FILE,
        "config": dataclasses.asdict(cfg),
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return card
