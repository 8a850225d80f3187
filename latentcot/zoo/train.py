"""Train a zoo model: ``cot`` (steps then answer), ``nocot`` (answer only), ``coconut`` (latent curriculum).

Fresh examples from the task's train split every step (the data of step t is a pure function of
(seed, t), so a resumed run sees exactly the batches an uninterrupted one would). Validation
accuracy is measured with greedy decoding through the real :class:`latentcot.engine.Engine`,
with the same gate, latent mode and markers that ``latentcot run`` would use on the saved model.

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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from latentcot.config import DecodeConfig, GateConfig, LatentConfig
from latentcot.engine import Engine
from latentcot.errors import InputError
from latentcot.gates import make_gate
from latentcot.latent import make_latent
from latentcot.looping import LoopConfig
from latentcot.tasks import load_task
from latentcot.zoo.data import ANSWER_PREFIX, MARKERS, METHODS, PROMPT_FILE, Layout, encode, write_prompt_file
from latentcot.zoo.forward import loss_of
from latentcot.zoo.registry import user_root
from latentcot.zoo.looped import is_looped, parse_spec, training_loops
from latentcot.zoo.tiny import ARCHITECTURES, tiny_config
from latentcot.zoo.tokenizer import KINDS as TOKENIZER_KINDS
from latentcot.zoo.tokenizer import task_tokenizer

LR_DECAYS = ("none", "cosine")
CHECKPOINT = "checkpoint.pt"
LOG = "train_log.jsonl"
SHAPE_FIELDS = ("arch", "hidden", "layers", "heads")
SAVE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
INIT_FIELDS = (*SHAPE_FIELDS, "tokenizer")  # what a coconut model inherits from its init model
DROPOUT_FIELDS = ("resid_pdrop", "embd_pdrop", "attn_pdrop", "attention_dropout", "hidden_dropout")


@dataclass(frozen=True)
class TrainConfig:
    task: str                        # task spec, e.g. "addition:n=4,digits=2,reverse=1"
    method: str                      # cot | nocot | coconut
    init: str | None = None          # coconut: directory of the cot model to start from (required)
    arch: str = "llama"              # gpt2 | llama | qwen2 | looped:k=K,L=L,... (ignored with init)
    hidden: int = 128                # model width (head_dim = hidden / heads)
    layers: int = 4
    heads: int = 4
    tokenizer: str = "char"          # char | word (word pieces: for tasks with made-up words); ignored with init
    dropout: float = 0.0             # synthetic data never repeats, so no regularisation is needed
    lr: float = 3e-3                 # AdamW peak learning rate
    warmup: int = 100                # linear warm-up steps (restarted with each coconut stage)
    decay: str = "none"              # after warm-up: none (constant) | cosine (to 10 % of lr at the stage's end)
    weight_decay: float = 0.01
    grad_clip: float = 1.0           # max global gradient norm
    batch_size: int = 64
    steps: int = 3000                # optimizer steps (coconut: per stage)
    c: int = 1                       # coconut: latent thoughts per replaced step
    max_stage: int | None = None     # coconut: last stage (all steps latent); None = the task's step count
    start_stage: int = 1             # coconut: first stage trained (0 = markers only)
    mix_prob: float = 0.0            # coconut: chance a batch uses a random earlier stage (against forgetting)
    reset_optimizer: bool = True     # coconut: fresh optimizer state at each stage, as in the paper
    seed: int = 0                    # model init, data order, stage mixing
    device: str = "cpu"              # cpu | cuda | cuda:N
    dtype: str = "float32"           # float32 | float64 (float64 for exact tests)
    save_dtype: str = "float32"      # dtype of the saved weights; the card's accuracy is measured on exactly them
    eval_every: int = 500            # steps between validation checks and checkpoints
    eval_examples: int = 200         # valid-split examples per check
    test_examples: int = 500         # test-split examples for the card

    def __post_init__(self):
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise InputError(message)
        check(self.method in METHODS, f"unknown method {self.method!r}; valid: {', '.join(METHODS)}")
        if self.arch.partition(":")[0] == "looped":
            parse_spec(self.arch)  # raises InputError naming a bad option
        else:
            check(self.arch in ARCHITECTURES,
                  f"unknown arch {self.arch!r}; valid: {', '.join(ARCHITECTURES)}, looped:k=K,L=L,...")
        check(self.method != "coconut" or self.init is not None,
              "--method coconut needs --init DIR, a cot model of the same task to start from")
        check(self.method == "coconut" or self.init is None, "--init only applies to --method coconut")
        for name in ("hidden", "layers", "heads", "batch_size", "steps", "c", "eval_every", "eval_examples",
                     "test_examples"):
            check(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, f"{name} must be an integer >= 1")
        check(self.hidden % self.heads == 0, f"hidden {self.hidden} is not divisible by heads {self.heads}")
        check(self.lr > 0 and self.warmup >= 0 and self.weight_decay >= 0 and self.grad_clip > 0,
              "lr and grad_clip must be > 0, warmup and weight_decay >= 0")
        check(self.tokenizer in TOKENIZER_KINDS,
              f"unknown tokenizer {self.tokenizer!r}; valid: {', '.join(TOKENIZER_KINDS)}")
        check(self.decay in LR_DECAYS, f"unknown lr decay {self.decay!r}; valid: {', '.join(LR_DECAYS)}")
        check(0 <= self.dropout < 1 and 0 <= self.mix_prob <= 1, "dropout must be in [0, 1), mix_prob in [0, 1]")
        check(self.max_stage is None or self.max_stage >= 1, "max_stage must be >= 1")
        check(self.start_stage >= 0 and (self.max_stage is None or self.start_stage <= self.max_stage),
              "start_stage must be in 0..max_stage")
        check(self.device == "cpu" or self.device.startswith("cuda"), f"unknown device {self.device!r}")
        check(self.dtype in ("float32", "float64"), f"unknown dtype {self.dtype!r}; valid: float32, float64")
        check(self.save_dtype in SAVE_DTYPES, f"unknown save dtype {self.save_dtype!r}; valid: {', '.join(SAVE_DTYPES)}")

    @property
    def stages(self) -> list[int]:
        return list(range(self.start_stage, self.max_stage + 1)) if self.method == "coconut" else [0]

    @property
    def total_steps(self) -> int:
        return self.steps * len(self.stages)

    def layout(self, stage: int) -> Layout:
        return Layout(self.method, stage, self.c, self.max_stage or 1)

    def decode(self, stage: int) -> dict:
        """How a model of this config at ``stage`` is decoded (the card's ``decode``)."""
        if self.method != "coconut":
            return {"gate": "token"}
        return {"gate": "fixed", "k": stage * self.c, "latent": "hidden", "markers": list(MARKERS)}


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
    config = tiny_config(cfg.arch, len(tokenizer), hidden=cfg.hidden, layers=cfg.layers, heads=cfg.heads,
                         pad_id=tokenizer.pad_token_id, bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id)
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
    return {"arch": config.model_type, "hidden": get("hidden_size", "n_embd"),
            "layers": get("num_hidden_layers", "n_layer"), "heads": get("num_attention_heads", "n_head")}


def _tokenizer_kind(model_dir: Path) -> str:
    """The tokenizer kind a zoo model was trained with (its card's config; char for older cards)."""
    card = model_dir / "card.json"
    config = json.loads(card.read_text(encoding="utf-8")).get("config", {}) if card.is_file() else {}
    return config.get("tokenizer", "char")


def _prepare(cfg: TrainConfig, out: Path, resume: bool):
    """(model, tokenizer, task) ready to train; writes prompt + tokenizer on a fresh start."""
    if not resume:
        if cfg.init is not None:
            init = Path(cfg.init)
            if not (init / "config.json").is_file() or not (init / PROMPT_FILE).is_file():
                raise InputError(f"--init {init} is not a trained zoo model (needs config.json and {PROMPT_FILE})")
            shutil.copy(init / PROMPT_FILE, out / PROMPT_FILE)
            AutoTokenizer.from_pretrained(init).save_pretrained(out)
        else:
            write_prompt_file(out)
            task = load_task(cfg.task, str(out / PROMPT_FILE))
            task_tokenizer(task, ANSWER_PREFIX, kind=cfg.tokenizer).save_pretrained(out)
    task = load_task(cfg.task, str(out / PROMPT_FILE))
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(cfg.init) if cfg.init else _new_model(cfg, tokenizer)
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    return model.to(device=cfg.device, dtype=dtype), tokenizer, task


def evaluate(model, tokenizer, task, examples, decode: dict, batch_size: int = 100) -> float:
    """Greedy accuracy on ``examples`` through the engine, decoded as ``decode`` says."""
    was_training = model.training
    model.eval()
    gate = make_gate(GateConfig(decode["gate"], k=decode.get("k")))
    latent = make_latent(LatentConfig(decode.get("latent", "hidden")))
    longest = max(len(tokenizer(Layout("cot").completion(e))["input_ids"]) for e in examples)
    cfg = DecodeConfig(max_new_tokens=longest + decode.get("k", 0) + 8, stop=task.stop,
                       markers=tuple(decode["markers"]) if decode.get("markers") else None)
    engine, correct = Engine(model, tokenizer), 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start: start + batch_size]
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
    """The config to train with: ``cfg``, or on resume the saved one (only ``steps`` may grow)."""
    if not resume:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise InputError(f"output directory {out} is not empty (pass --resume to continue it)")
        return cfg
    if not (out / CHECKPOINT).is_file():
        raise InputError(f"nothing to resume: {out / CHECKPOINT} does not exist")
    saved = TrainConfig(**torch.load(out / CHECKPOINT, weights_only=False, map_location="cpu")["config"])
    free = ("steps", "device", "max_stage", "save_dtype") + (INIT_FIELDS if cfg.init else ())  # with init these are the init's
    differ = [f.name for f in dataclasses.fields(cfg) if f.name not in free
              and getattr(cfg, f.name) != getattr(saved, f.name)]
    if differ:
        raise InputError(f"--resume with settings that differ from the saved run: {', '.join(differ)}")
    return dataclasses.replace(saved, steps=cfg.steps, device=cfg.device)


def train(cfg: TrainConfig, out: Path, *, resume: bool = False, argv: Sequence[str] | None = None,
          until_step: int | None = None, progress: bool = True) -> dict:
    """Train, log, checkpoint, test; returns the card (None-free dict). ``until_step`` stops early
    after checkpointing, as an interruption would (``resume`` continues from there)."""
    out = Path(out).expanduser()
    cfg = _check_out(cfg, out, resume)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer, task = _prepare(cfg, out, resume)
    if cfg.init is not None:  # record the shape actually trained, not the ignored defaults
        cfg = dataclasses.replace(cfg, **_shape_of(model.config), tokenizer=_tokenizer_kind(Path(cfg.init)))
    if cfg.method == "coconut" and cfg.max_stage is None:
        steps_per_example = len(task.examples("train", 1, cfg.seed)[0].steps)
        cfg = dataclasses.replace(cfg, max_stage=max(1, steps_per_example))
    optimizer, step, seconds = _optimizer(cfg, model), 0, 0.0
    if resume:
        state = torch.load(out / CHECKPOINT, weights_only=False, map_location=cfg.device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, seconds = state["step"], state["seconds"]
        torch.set_rng_state(state["rng"])
    valid = task.examples("valid", cfg.eval_examples, cfg.seed)
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
        examples = task.examples("train", cfg.batch_size, seed=cfg.seed * 1_000_003 + step)
        batch = encode(tokenizer, [task.prompt(e) for e in examples], examples,
                       cfg.layout(_batch_stage(cfg, step, stage))).to(cfg.device)
        # a looped model may draw its loop count per step (seeded by step, so resume draws the same)
        looping = {"looping": LoopConfig(training_loops(model.config, cfg.seed, step))} if is_looped(model) else {}
        loss = loss_of(model, batch, **looping)
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
            accuracy = evaluate(model, tokenizer, task, valid, cfg.decode(stage))
            seconds = time.monotonic() - started
            line = {"step": step, "stage": stage, "loss": sum(losses) / len(losses), "valid_accuracy": accuracy,
                    "valid_examples": len(valid), "seconds": round(seconds, 1)}
            with open(out / LOG, "a", encoding="utf-8") as log:
                log.write(json.dumps(line) + "\n")
            bar.write(f"step {step} stage {stage}: loss {line['loss']:.4f} valid accuracy {accuracy:.1%}")
            losses = []
            _save_checkpoint(out, cfg, model, optimizer, step, stage, seconds)
    bar.close()
    if step < cfg.total_steps:
        return {}
    return _finish(cfg, out, model, tokenizer, task, seconds, argv)


def resave(model_dir: Path, save_dtype: str) -> dict:
    """Store a trained zoo model's weights in ``save_dtype`` (e.g. float16: half the size), measure
    its test accuracy again on exactly those weights and rewrite its card, whose train command
    then names ``--save-dtype``: what the command would have produced directly."""
    model_dir = Path(model_dir)
    card = json.loads((model_dir / "card.json").read_text(encoding="utf-8"))
    cfg = TrainConfig(**{**card["config"], "save_dtype": save_dtype, "device": "cpu"})
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    task = load_task(cfg.task, str(model_dir / PROMPT_FILE))
    argv = [a for a in shlex.split(card["train_command"] or "") if a] + ["--save-dtype", save_dtype]
    return _finish(cfg, model_dir, model, tokenizer, task, card["train_seconds"], argv)


def _save_checkpoint(out: Path, cfg: TrainConfig, model, optimizer, step: int, stage: int, seconds: float) -> None:
    state = {"config": dataclasses.asdict(cfg), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "step": step, "stage": stage, "seconds": seconds, "rng": torch.get_rng_state()}
    partial = out / (CHECKPOINT + ".partial")
    torch.save(state, partial)
    partial.replace(out / CHECKPOINT)  # atomic: a kill never leaves a torn checkpoint


def _finish(cfg: TrainConfig, out: Path, model, tokenizer, task, seconds: float, argv) -> dict:
    """Test accuracy, HF weights and the card."""
    decode = cfg.decode(cfg.stages[-1])
    test = task.examples("test", cfg.test_examples, cfg.seed)
    saved = SAVE_DTYPES[cfg.save_dtype]
    with torch.no_grad():  # round to the saved precision first, so the card describes the shipped weights
        for parameter in model.parameters():
            parameter.copy_(parameter.to(saved))
    accuracy = evaluate(model, tokenizer, task, test, decode)
    model.to(saved).save_pretrained(out)
    card = {
        "task": task.spec, "method": cfg.method, "arch": model.config.model_type,
        "params": sum(p.numel() for p in model.parameters()),
        "test_accuracy": accuracy, "test_examples": len(test),
        "train_command": shlex.join(argv) if argv else None,
        "train_seconds": round(seconds, 1), "decode": decode,
        "prompt": PROMPT_FILE, "config": dataclasses.asdict(cfg),
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return card
