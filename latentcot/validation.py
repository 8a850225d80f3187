"""The one way config dataclasses check their fields: a failed check is an InputError (one line, exit 2)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, TypeVar

from latentcot.errors import InputError

C = TypeVar("C")


def require(ok: bool, message: str) -> None:
    """Raise InputError(message) unless ``ok``."""
    if not ok:
        raise InputError(message)


def require_choice(value: Any, choices: tuple[str, ...], what: str) -> None:
    require(value in choices, f"unknown {what} {value!r}; valid: {', '.join(choices)}")


def is_int(value: Any) -> bool:
    """An integer that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def from_mapping(cls: type[C], values: Mapping[str, Any]) -> C:
    """Build config dataclass ``cls`` from a mapping; unknown keys are an error naming the valid ones."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    require(not unknown, f"unknown {cls.__name__} key(s) {', '.join(unknown)}; valid: {', '.join(names)}")
    return cls(**values)
