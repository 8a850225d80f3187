"""A run directory as pandas frames, in one call: ``run = load_run("runs/x")``.

``run.samples`` has one row per record (the ``setting`` object flattened into columns, plus the
record's decoding ``method``); ``run.steps`` is long-form, one row per (record, step), with every
per-step array of the records (``mode``, ``entropy``, ``p_token``, ``emitted``, … and measured
ones such as ``kl_counterfactual``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latentcot.errors import InputError
from latentcot.store import MANIFEST, SAMPLES, iter_samples

KEY = ["task_spec", "setting_id", "example_id"]  # identifies a record within a run
RECORD_COLUMNS = [
    "task",
    "task_spec",
    "domain",
    "example_id",
    "setting_id",
    "prompt",
    "completion",
    "answer",
    "prediction",
    "correct",
    "extraction",
    "finish_reason",
    "n_steps",
    "n_latent",
]
# the method of a record written before records named one, from its gate: a fixed-k gate is
# COCONUT's decoding; any other gate names its own rule
GATE_METHODS = {"token": "token", "latent": "latent", "entropy": "entropy", "fixed": "coconut"}


@dataclass(frozen=True)
class Run:
    path: Path
    manifest: dict[str, Any]
    samples: pd.DataFrame  # one row per (example, setting)
    steps: pd.DataFrame  # one row per (example, setting, step)


def method_of(setting: Mapping[str, Any]) -> str:
    """``setting.method`` where the record names it; otherwise derived from ``setting.gate``
    (``GATE_METHODS``; an unlisted gate is its own method)."""
    if setting.get("method"):
        return str(setting["method"])
    return GATE_METHODS.get(setting.get("gate"), str(setting.get("gate")))


def tokens_emitted(record: Mapping[str, Any]) -> int:
    """Tokens a record sampled: its token steps plus the latent steps at which the method also
    emitted a token (``steps.emitted``, Mixture of Inputs and SwiReasoning; absent = none).
    Marker steps feed a fixed token the method did not choose, so they do not count."""
    steps = record["steps"]
    modes = steps["mode"]
    emitted = steps.get("emitted")
    if emitted is None:
        emitted = [False] * len(modes)
    elif len(emitted) != len(modes):
        raise InputError(
            f"record {record['example_id']} ({record['setting_id']}): "
            f"steps.emitted has {len(emitted)} values for {len(modes)} steps"
        )
    return sum(m == "token" or (m == "latent" and bool(e)) for m, e in zip(modes, emitted))


def samples_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per record: record fields, the setting's keys as columns, the record's ``method``
    (derived from the gate for records that predate methods), and per-record aggregates
    (``latent_fraction``, ``mean_entropy``, ``forward_passes``, ``tokens_emitted``)."""
    rows = []
    for r in records:
        entropy = [e for e in r["steps"]["entropy"] if e is not None]
        rows.append(
            {
                **{c: r.get(c) for c in RECORD_COLUMNS},
                **{k: v for k, v in r["setting"].items() if k not in RECORD_COLUMNS},
                "method": method_of(r["setting"]),
                "latent_fraction": r["n_latent"] / r["n_steps"] if r["n_steps"] else 0.0,
                "mean_entropy": float(np.mean(entropy)) if entropy else math.nan,
                # decode forwards: one per generated position (the prefill is shared by every setting)
                "forward_passes": r["n_steps"],
                "tokens_emitted": tokens_emitted(r),
            }
        )
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame["correct"] = frame["correct"].astype(bool)
    return frame


def steps_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Long form: KEY columns, ``domain``, ``step`` and one column per per-step array. An array
    some records lack (a measurement switched on for only part of a run) is missing (NaN/None)
    for their steps."""
    columns: dict[str, list] = {c: [] for c in [*KEY, "domain", "step"]}
    extra: dict[str, list] = {}
    total = 0
    for r in records:
        steps, n = r["steps"], r["n_steps"]
        for c in KEY + ["domain"]:
            columns[c].extend([r[c]] * n)
        columns["step"].extend(range(n))
        for name, values in steps.items():
            if len(values) != n:
                raise InputError(
                    f"record {r['example_id']} ({r['setting_id']}): steps.{name} has {len(values)} values for {n} steps"
                )
            column = extra.setdefault(name, [None] * total)
            column.extend(values)
        total += n
        for column in extra.values():
            column.extend([None] * (total - len(column)))
    frame = pd.DataFrame({**columns, **extra})
    for name, values in extra.items():  # measured arrays hold None where not measured: make them NaN
        if name not in ("mode", "token_id", "emitted") and _numeric(values):
            frame[name] = pd.to_numeric(frame[name], errors="coerce").astype(float)
    if "emitted" in frame.columns:  # a record without the array emitted nothing at a latent step
        frame["emitted"] = frame["emitted"].map(bool).astype(bool)
    return frame


def _numeric(values: list) -> bool:
    return all(v is None or isinstance(v, (int, float)) for v in values)


def load_run(run_dir: str | Path) -> Run:
    """Read ``manifest.json`` and ``samples.jsonl`` of a run directory (a torn last line is ignored)."""
    path = Path(run_dir)
    if not (path / SAMPLES).is_file():
        raise InputError(f"{path} is not a run directory (no {SAMPLES})")
    manifest = json.loads((path / MANIFEST).read_text()) if (path / MANIFEST).is_file() else {}
    records = list(iter_samples(path / SAMPLES))
    return Run(path, manifest, samples_frame(records), steps_frame(records))
