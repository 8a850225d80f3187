"""The settings of a threshold sweep: τ grids, per-domain threshold maps, and the two baselines."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from latentcot.config import DecodeConfig, GateConfig, LatentConfig
from latentcot.errors import InputError
from latentcot.experiment import Setting

MAX_THRESHOLDS = 1000  # a typo such as 0:3:0.0001 should not start a 30,000-setting sweep


def _number(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"bad threshold {text.strip()!r} in {spec!r}: not a number") from None
    if not math.isfinite(value) or value < 0:
        raise InputError(f"threshold must be a number >= 0, got {text.strip()!r} in {spec!r}")
    return value


def parse_thresholds(spec: str) -> list[float]:
    """``"0,0.5,1"`` (a list) or ``"0:3:0.25"`` (start:stop:step, stop included) → sorted thresholds."""
    if ":" in spec:
        parts = spec.split(":")
        if len(parts) != 3:
            raise InputError(f"bad threshold range {spec!r}; expected start:stop:step, e.g. 0:3:0.25")
        start, stop, step = (_number(p, spec) for p in parts)
        if step <= 0:
            raise InputError(f"bad threshold range {spec!r}: step must be > 0")
        if stop < start:
            raise InputError(f"bad threshold range {spec!r}: stop is below start")
        count = math.floor((stop - start) / step + 1e-9) + 1
        if count > MAX_THRESHOLDS:
            raise InputError(f"threshold range {spec!r} has {count} values (at most {MAX_THRESHOLDS})")
        # multiply rather than accumulate, and round, so 0:1:0.1 gives 0.3 and not 0.30000000000000004
        values = [round(start + i * step, 10) for i in range(count)]
    else:
        values = [_number(p, spec) for p in spec.split(",") if p.strip()]
        if not values:
            raise InputError(f"no thresholds in {spec!r}")
    return sorted(set(values))


def read_threshold_map(path: str | Path) -> dict[str, float]:
    """A JSON object {domain: τ} ("*" = every other domain); errors name the file (and line)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"threshold map {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"malformed JSON: {exc.msg}", where=f"{path}:{exc.lineno}") from None
    if not isinstance(data, dict) or not data:
        raise InputError("a threshold map is a non-empty JSON object {domain: threshold}", where=str(path))
    for domain, tau in data.items():
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau < 0:
            raise InputError(f"threshold for domain {domain!r} must be a number >= 0, got {tau!r}", where=str(path))
    return {str(d): float(t) for d, t in data.items()}


def sweep_settings(
    thresholds: Sequence[float],
    latents: Sequence[LatentConfig],
    decode: DecodeConfig,
    *,
    unit: str = "nats",
    threshold_map: dict[str, float] | None = None,
    max_consecutive: int | None = None,
    max_latent: int | None = None,
) -> tuple[Setting, ...]:
    """The token baseline, then per latent mode: the latent-only baseline, each threshold, and the
    per-domain map if given. With one latent mode and K thresholds that is K + 2 settings."""
    if not thresholds and threshold_map is None:
        raise InputError("a sweep needs thresholds (--thresholds) or a per-domain map (--threshold-map)")
    entropy = GateConfig("entropy", threshold=0.0, unit=unit, max_consecutive=max_consecutive, max_latent=max_latent)
    settings = [Setting(GateConfig("token"), LatentConfig(), decode)]
    for latent in latents:
        settings.append(Setting(GateConfig("latent"), latent, decode))
        settings += [Setting(replace(entropy, threshold=tau), latent, decode) for tau in thresholds]
        if threshold_map is not None:
            per_domain = replace(entropy, threshold=None, threshold_map=tuple(threshold_map.items()))
            settings.append(Setting(per_domain, latent, decode))
    return tuple(dict.fromkeys(settings))  # a latent mode given twice adds nothing


def method_settings(specs: Sequence[str], thresholds: Sequence[float], decode: DecodeConfig) -> tuple[Setting, ...]:
    """The token baseline (every comparison is paired against it), then each ``--method`` spec; a method
    with a threshold parameter takes one setting per ``--thresholds`` value."""
    from latentcot.methods import expand_thresholds, parse_method

    settings = [Setting.of_method(parse_method("token"), decode)]
    for spec in specs:
        settings += [Setting.of_method(choice, decode) for choice in expand_thresholds(spec, list(thresholds))]
    return unique_settings(settings)


def unique_settings(settings: Sequence[Setting]) -> tuple[Setting, ...]:
    """Each distinct decoding once (by setting id), in first-seen order: a baseline given again, or a
    method that resolves to a setting already present, is decoded once."""
    unique: dict[str, Setting] = {}
    for setting in settings:
        unique.setdefault(setting.id, setting)
    return tuple(unique.values())
