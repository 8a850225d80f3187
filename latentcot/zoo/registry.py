"""Where models of the zoo live and what is known about them.

Built-in models ship inside the package (``latentcot/zoo/models/<name>/``); models a user trains
go to ``$LATENTCOT_HOME/models/<name>/`` (default ``~/.cache/latentcot``). Each is a
``save_pretrained`` directory with a ``card.json``: the task and method it was trained with,
its measured test accuracy, and the command that reproduces it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latentcot.errors import InputError

BUILTIN_ROOT = Path(__file__).resolve().parent / "models"
CARD = "card.json"
BUILTIN_PREFIX = "builtin:"  # how a command names a zoo model: builtin:NAME
WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
TOKENIZER = ("tokenizer.json", "tokenizer_config.json")


def latentcot_home() -> Path:
    return Path(os.environ.get("LATENTCOT_HOME") or "~/.cache/latentcot").expanduser()


def user_root() -> Path:
    return latentcot_home() / "models"


@dataclass(frozen=True)
class ZooModel:
    name: str
    origin: str  # "built-in" | "user"
    path: Path
    card: dict[str, Any]  # empty when the directory has no readable card.json

    @property
    def missing(self) -> list[str]:
        """What a loadable model directory lacks (empty when it is ready)."""
        lacks = [] if (self.path / "config.json").is_file() else ["config.json"]
        if not any((self.path / w).is_file() for w in WEIGHTS):
            lacks.append("weights")
        if not any((self.path / t).is_file() for t in TOKENIZER):
            lacks.append("tokenizer")
        return lacks

    @property
    def budget(self) -> str:
        """What training it took, from the card: optimizer steps (over every curriculum stage), examples
        per step and wall time, e.g. ``2500 × 64, 13 min``; ``-`` when the card does not say."""
        config, seconds = self.card.get("config") or {}, self.card.get("train_seconds")
        steps, batch = config.get("steps"), config.get("batch_size")
        if not (isinstance(steps, int) and isinstance(batch, int) and isinstance(seconds, (int, float))):
            return "-"
        if config.get("method") == "coconut" and isinstance(config.get("max_stage"), int):
            steps *= config["max_stage"] - int(config.get("start_stage", 1)) + 1
        return f"{steps} × {batch}, {seconds / 60:.0f} min"

    @property
    def status(self) -> str:
        return "ready" if not self.missing else "incomplete: no " + ", ".join(self.missing)


def _read_card(path: Path) -> dict[str, Any]:
    try:
        card = json.loads((path / CARD).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return card if isinstance(card, dict) else {}


def _models_in(root: Path, origin: str) -> list[ZooModel]:
    if not root.is_dir():
        return []
    return [ZooModel(p.name, origin, p, _read_card(p)) for p in sorted(root.iterdir()) if p.is_dir()]


def list_models() -> list[ZooModel]:
    """Built-in models, then the user's (a user model may not shadow a built-in name)."""
    builtin = _models_in(BUILTIN_ROOT, "built-in")
    taken = {m.name for m in builtin}
    return builtin + [m for m in _models_in(user_root(), "user") if m.name not in taken]


def resolve(name: str) -> Path:
    """Directory of the zoo model ``name`` (what ``builtin:NAME`` refers to)."""
    models = {m.name: m for m in list_models()}
    if name not in models:
        raise InputError(
            f"unknown built-in model {name!r}; available: {', '.join(models) or 'none'} (`latentcot models` lists them)"
        )
    return models[name].path


def builtin_path(spec: str) -> Path | None:
    """The directory a ``builtin:NAME`` spec names (InputError for an unknown name), or None for any other
    spec (a path or a hub id)."""
    return resolve(spec.removeprefix(BUILTIN_PREFIX)) if spec.startswith(BUILTIN_PREFIX) else None
