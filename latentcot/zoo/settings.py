"""What a zoo training run is, as plain settings: :class:`TrainConfig` and the choices it checks against.

Kept free of torch and transformers, so that ``latentcot train --help`` (whose options are generated
from ``TrainConfig``) and every other command start without importing them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latentcot.errors import InputError
from latentcot.validation import is_int, is_number, require, require_choice
from latentcot.zoo.registry import builtin_path

if TYPE_CHECKING:  # latentcot.types imports torch
    from latentcot.types import Example

METHODS = ("cot", "nocot", "coconut", "soft")
LR_DECAYS = ("none", "cosine")
SAVE_DTYPES = ("float32", "float16", "bfloat16")
POSITIVE_INTS = (
    "hidden",
    "layers",
    "heads",
    "batch_size",
    "steps",
    "c",
    "eval_every",
    "eval_examples",
    "test_examples",
)
ANSWER_PREFIX = "Answer:"
MARKERS = ("<bot>", "<eot>")  # begin / end of a latent (continuous) thought segment
ARCHITECTURES = ("gpt2", "llama", "qwen2")  # plain architectures of new models (see zoo.tiny)
TOKENIZER_KINDS = ("char", "word")  # see zoo.tokenizer
MODEL_TYPE = "looped"
INJECTIONS = ("none", "add", "concat")
POSITIONS = ("rope", "learned")
TRAIN_LOOPS = ("fixed", "uniform")
SPEC_KEYS = {
    "k": "block_layers",
    "L": "loops",
    "prelude": "prelude",
    "coda": "coda",
    "inject": "inject",
    "random": "train_loops",
    "cos": "cosine_weight",
    "pos": "positions",
}


def parse_arch_spec(spec: str) -> dict:
    """``looped:k=2,L=4,prelude=1,coda=1,inject=add,random=1,cos=0.1,pos=learned`` -> LoopedConfig fields."""
    name, _, rest = spec.partition(":")
    if name != MODEL_TYPE:
        raise InputError(f"not a looped architecture spec: {spec!r}")
    fields: dict = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key.strip() not in SPEC_KEYS:
            raise InputError(f"bad looped option {item!r} in {spec!r}; valid keys: {', '.join(SPEC_KEYS)}")
        field, value = SPEC_KEYS[key.strip()], value.strip()
        try:
            if field == "train_loops":
                fields[field] = "uniform" if int(value) else "fixed"
            elif field == "cosine_weight":
                fields[field] = float(value)
            elif field in ("inject", "positions"):
                fields[field] = value
            else:
                fields[field] = int(value)
        except ValueError:
            raise InputError(f"bad value {value!r} for {key.strip()} in {spec!r}") from None
    if fields.get("inject", "none") not in INJECTIONS:
        raise InputError(f"unknown inject {fields['inject']!r} in {spec!r}; valid: {', '.join(INJECTIONS)}")
    if fields.get("positions", "rope") not in POSITIONS:
        raise InputError(f"unknown pos {fields['positions']!r} in {spec!r}; valid: {', '.join(POSITIONS)}")
    for field in ("block_layers", "loops"):
        if fields.get(field, 1) < 1:
            raise InputError(f"{field} must be >= 1 in {spec!r}")
    if fields.get("prelude", 0) < 0 or fields.get("coda", 0) < 0 or fields.get("cosine_weight", 0) < 0:
        raise InputError(f"prelude, coda and cos must be >= 0 in {spec!r}")
    return fields


@dataclass(frozen=True)
class Layout:
    """How one batch of examples is laid out: the method and its curriculum stage."""

    method: str  # cot | nocot | coconut | soft (laid out as cot; the forward mixes in soft inputs)
    stage: int = 0  # coconut: how many leading steps are replaced by latents
    c: int = 1  # coconut: latent positions per replaced step
    max_stage: int = 1  # coconut: at this stage every step is replaced

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}")
        if not 0 <= self.stage <= self.max_stage:
            raise ValueError(f"stage {self.stage} outside 0..{self.max_stage}")

    @property
    def markers(self) -> bool:
        return self.method == "coconut"

    @property
    def n_latent(self) -> int:
        return self.stage * self.c if self.method == "coconut" else 0

    def kept_steps(self, steps: Sequence[str]) -> tuple[str, ...]:
        if self.method == "nocot" or (self.method == "coconut" and self.stage >= self.max_stage):
            return ()
        if self.method == "coconut":
            return tuple(steps[self.stage :])
        return tuple(steps)

    def completion(self, example: Example) -> str:
        """The text after the prompt (and after the latent segment), without <eos>."""
        lines = [*self.kept_steps(example.steps), f"{ANSWER_PREFIX} {example.answer}"]
        return "\n".join(lines)


def described(default: Any = dataclasses.MISSING, help: str = "", *, cli: bool = True) -> Any:
    """A TrainConfig field with its one-line help, the text ``latentcot train --help`` shows for
    its option; ``cli=False`` keeps a field off the command line (it keeps its default there)."""
    return dataclasses.field(default=default, metadata={"help": help, "cli": cli})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. ``latentcot train`` has an option for each field but
    those marked ``cli=False``, named after it (``--batch-size`` for ``batch_size``), with the
    field's type, default and help."""

    task: str = described(
        help="Registered task (name or name:key=value,...), e.g. addition:n=4,digits=2,reverse=1, "
        "or a .json/.jsonl file."
    )
    method: str = described(
        help="cot (steps, then answer) | nocot (answer only) | coconut (latent curriculum) | "
        "soft (cot whose uncertain steps are fed soft inputs, see --soft-threshold)."
    )
    eval_task: str | None = described(
        None,
        "Task or .json/.jsonl file whose valid and test examples measure the model (default: --task). "
        "A file given as --task trains on every one of its examples: name its held-out file here.",
    )
    init: str | None = described(
        None,
        "A trained model directory (or builtin:NAME) to start from: the cot model for coconut (required)"
        " and soft; for cot or nocot, a model of an easier task (a curriculum).",
    )
    arch: str = described(
        "llama",
        "gpt2 | llama | qwen2 | looped:k=K,L=L[,prelude=P,coda=C,inject=add,random=1,"
        "cos=W,pos=learned] (new models only).",
    )
    hidden: int = described(128, "Model width; head_dim = hidden / heads (new models only).")
    layers: int = described(4, "Transformer layers (new models only).")
    heads: int = described(4, "Attention heads (new models only).")
    tokenizer: str = described(
        "char", "char (one token per character) | word (word pieces; for made-up words, e.g. prosqa) (new models only)."
    )
    dropout: float = described(0.0, "Dropout of a new model (synthetic data never repeats: none is needed).", cli=False)
    lr: float = described(3e-3, "Peak learning rate (AdamW).")
    warmup: int = described(100, "Linear warm-up steps (restarted with each coconut stage).")
    decay: str = described("none", "Learning rate after warm-up: none (constant) | cosine (to 10 % at a stage's end).")
    weight_decay: float = described(0.01, "AdamW weight decay.")
    grad_clip: float = described(1.0, "Largest global gradient norm.")
    batch_size: int = described(
        64, "Examples per step (fresh from the train split each step; a file's examples reshuffled each epoch)."
    )
    steps: int = described(3000, "Optimizer steps (coconut: per curriculum stage).")
    c: int = described(1, "coconut: latent thoughts per replaced step.")
    max_stage: int | None = described(None, "coconut: last stage, all steps latent (default: the task's step count).")
    start_stage: int = described(1, "coconut: first stage trained (0 = markers only).")
    mix_prob: float = described(0.0, "coconut: chance a batch uses a random earlier stage (against forgetting).")
    soft_threshold: float = described(
        0.3,
        "soft: a completion position whose predicted distribution has entropy above this (nats) is fed "
        "that distribution's mixture of embeddings instead of the gold token (decoded the same way).",
    )
    reset_optimizer: bool = described(True, "coconut: fresh optimizer state at each stage, as in the paper.", cli=False)
    seed: int = described(0, "Seed of the init, the data order and stage mixing.")
    device: str = described("cpu", "cpu | cuda | cuda:N.")
    dtype: str = described("float32", "float32 | float64 (float64 for exact tests).", cli=False)
    save_dtype: str = described(
        "float32",
        "Dtype of the saved weights: float32 | float16 | bfloat16 (the card's "
        "accuracy is measured on them; also applies on --resume).",
    )
    eval_every: int = described(500, "Steps between validation checks and checkpoints.")
    eval_examples: int = described(200, "Valid-split examples per check.")
    test_examples: int = described(500, "Test-split examples measured for card.json.")

    def __post_init__(self):
        require_choice(self.method, METHODS, "method")
        if self.arch.partition(":")[0] == "looped":
            parse_arch_spec(self.arch)  # raises InputError naming a bad option
        else:
            require(
                self.arch in ARCHITECTURES,
                f"unknown arch {self.arch!r}; valid: {', '.join(ARCHITECTURES)}, looped:k=K,L=L,...",
            )
        require(
            self.method != "coconut" or self.init is not None,
            "--method coconut needs --init DIR, a cot model of the same task to start from",
        )
        if self.init is not None:  # one spelling per directory ("m/" is "m"), so --resume compares like with like
            require(isinstance(self.init, (str, Path)) and str(self.init).strip(), "--init must name a directory")
            init = builtin_path(str(self.init)) or self.init  # a shipped model, as run --model spells it
            object.__setattr__(self, "init", str(Path(init)))
        for name in POSITIVE_INTS:
            require(is_int(getattr(self, name)) and getattr(self, name) >= 1, f"{name} must be an integer >= 1")
        require(self.hidden % self.heads == 0, f"hidden {self.hidden} is not divisible by heads {self.heads}")
        require(
            all(
                is_number(getattr(self, n))
                for n in ("lr", "grad_clip", "weight_decay", "dropout", "mix_prob", "soft_threshold")
            ),
            "lr, grad_clip, weight_decay, dropout, mix_prob and soft_threshold must be numbers",
        )
        require(
            self.lr > 0 and self.grad_clip > 0 and self.weight_decay >= 0 and self.soft_threshold >= 0,
            "lr and grad_clip must be > 0, weight_decay and soft_threshold >= 0",
        )
        require(is_int(self.warmup) and self.warmup >= 0, "warmup must be an integer >= 0")
        require_choice(self.tokenizer, TOKENIZER_KINDS, "tokenizer")
        require_choice(self.decay, LR_DECAYS, "lr decay")
        require(0 <= self.dropout < 1 and 0 <= self.mix_prob <= 1, "dropout must be in [0, 1), mix_prob in [0, 1]")
        require(
            self.max_stage is None or (is_int(self.max_stage) and self.max_stage >= 1),
            "max_stage must be an integer >= 1",
        )
        require(
            is_int(self.start_stage)
            and self.start_stage >= 0
            and (self.max_stage is None or self.start_stage <= self.max_stage),
            "start_stage must be in 0..max_stage",
        )
        require(isinstance(self.reset_optimizer, bool), "reset_optimizer must be true or false")
        require(is_int(self.seed), "seed must be an integer")
        require(
            isinstance(self.device, str) and re.fullmatch(r"cpu|cuda(:\d+)?", self.device) is not None,
            f"unknown device {self.device!r}; valid: cpu, cuda, cuda:N",
        )
        require_choice(self.dtype, ("float32", "float64"), "dtype")
        require_choice(self.save_dtype, SAVE_DTYPES, "save dtype")

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
        if self.method == "soft":
            return {"gate": "entropy", "threshold": self.soft_threshold, "latent": "soft"}
        if self.method != "coconut":
            return {"gate": "token"}
        return {"gate": "fixed", "k": stage * self.c, "latent": "hidden", "markers": list(MARKERS)}
