"""Analysis speed against the 10 s budget for a run of 100,000 step rows.

    python benchmarks/analyze.py [--steps 100000] [--repeats 3] [--plots]

Writes a synthetic run directory to a temporary folder (3 domains; token and latent baselines and
ten entropy thresholds; 32 steps per record; counterfactual measurements and logit-lens tokens
included, so every table has work to do), then times ``load_run`` + ``compute_tables`` (all
tables, 1000 bootstrap replicates each). With ``--plots`` it also times building and rendering
every figure of the report (PNG + SVG), separately. Prints the best of --repeats runs in seconds
and its ratio to the budget (below 1 is within budget).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from latentcot.analysis.load import load_run
from latentcot.analysis.report import build_figures, render_figure
from latentcot.analysis.stats import AnalysisOptions
from latentcot.analysis.tables import compute_tables

BUDGET_S = 10.0
DOMAINS = ("arithmetic", "logic", "planning")
THRESHOLDS = tuple(np.round(np.linspace(0.25, 2.5, 10), 2))
STEPS = 32


def _setting(gate: str, threshold: float | None) -> dict:
    return {
        "gate": gate,
        "threshold": threshold,
        "unit": "nats",
        "k": None,
        "max_consecutive": None,
        "max_latent": None,
        "latent": "soft",
        "latent_temperature": 1.0,
        "latent_top_k": 8,
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": 0,
        "max_new_tokens": STEPS,
        "stop": [],
        "markers": None,
    }


def synthetic_records(n_steps_total: int, rng: np.random.Generator):
    settings = [("token", _setting("token", None)), ("latent-soft-lt1", _setting("latent", None))]
    settings += [(f"entropy-{t:g}nats-soft-lt1", _setting("entropy", float(t))) for t in THRESHOLDS]
    per_cell = math.ceil(n_steps_total / (len(DOMAINS) * len(settings) * STEPS))
    for d, domain in enumerate(DOMAINS):
        difficulty = rng.uniform(0.3, 2.0, per_cell)
        for sid, setting in settings:
            for i in range(per_cell):
                entropy = rng.gamma(2.0, difficulty[i] / 2, STEPS)
                tau = setting["threshold"]
                latent = entropy > tau if tau is not None else np.full(STEPS, setting["gate"] == "latent")
                p = np.clip(np.exp(-entropy * rng.uniform(0.6, 1.0, STEPS)), 1e-6, 1.0)
                steps = {
                    "mode": np.where(latent, "latent", "token").tolist(),
                    "token_id": rng.integers(0, 500, STEPS).tolist(),
                    "entropy": entropy.tolist(),
                    "p_token": p.tolist(),
                    "p_max": p.tolist(),
                    "kl_counterfactual": [None if m else float(e * 0.3) for m, e in zip(latent, entropy)],
                    "latent_token_cos": [float(1 - e / 8) if m else None for m, e in zip(latent, entropy)],
                    "latent_norm": [float(0.5 + e / 10) if m else None for m, e in zip(latent, entropy)],
                    "lens_top": [["a", "b", "c", "d", "e"] if m else None for m in latent],
                }
                correct = bool(rng.random() < 0.9 - 0.2 * difficulty[i] + 0.05 * d)
                yield {
                    "setting": setting,
                    "setting_id": sid,
                    "task": domain,
                    "task_spec": f"{domain}:n=1",
                    "domain": domain,
                    "example_id": f"{domain}-{i}",
                    "prompt": "Q",
                    "completion": "A",
                    "answer": "1",
                    "prediction": "1" if correct else "0",
                    "correct": correct,
                    "extraction": "strict",
                    "finish_reason": "length",
                    "n_steps": STEPS,
                    "n_latent": int(latent.sum()),
                    "steps": steps,
                }


def write_run(folder: Path, n_steps_total: int) -> int:
    rng = np.random.default_rng(0)
    (folder / "manifest.json").write_text(json.dumps({"config": {"measure": ["counterfactual"]}}))
    n = 0
    with open(folder / "samples.jsonl", "w") as f:
        for record in synthetic_records(n_steps_total, rng):
            f.write(json.dumps(record) + "\n")
            n += record["n_steps"]
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plots", action="store_true")
    args = parser.parse_args()
    options = AnalysisOptions()
    with tempfile.TemporaryDirectory() as tmp:
        rows = write_run(Path(tmp), args.steps)
        best, plot_best = math.inf, math.inf
        for _ in range(args.repeats):
            start = time.perf_counter()
            run = load_run(tmp)
            tables = compute_tables(run.samples, run.steps, options)
            best = min(best, time.perf_counter() - start)
            if args.plots:
                start = time.perf_counter()
                figures, _ = build_figures(run, tables, options)
                for fig in figures.values():
                    render_figure(fig)
                plot_best = min(plot_best, time.perf_counter() - start)
    print(
        f"load + all tables, {rows:,} step rows ({len(run.samples):,} records): {best:.2f} s "
        f"= {best / BUDGET_S:.2f} of the {BUDGET_S:g} s budget"
    )
    if args.plots:
        print(f"all figures built and rendered (PNG + SVG), timed separately: {plot_best:.2f} s")


if __name__ == "__main__":
    main()
