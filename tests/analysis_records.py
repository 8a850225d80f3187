"""Constructed samples.jsonl records (the run-directory contract) for the analysis tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

BASE_SETTING = {
    "gate": "token",
    "threshold": None,
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
    "max_new_tokens": 16,
    "stop": [],
    "markers": None,
}


def setting(gate: str, threshold: float | None = None, **changes) -> tuple[str, dict]:
    """(setting_id, setting) in the engine's naming scheme."""
    s = {**BASE_SETTING, "gate": gate, "threshold": threshold, **changes}
    if gate == "entropy":
        sid = f"entropy-{threshold:g}{s['unit']}-{s['latent']}-lt{s['latent_temperature']:g}"
    elif gate == "latent":
        sid = f"latent-{s['latent']}-lt{s['latent_temperature']:g}"
    else:
        sid = gate
    return sid, s


def method_setting(method: str, setting_id: str | None = None, gate: str = "latent", **params) -> tuple[str, dict]:
    """(setting_id, setting) of a named decoding method: ``setting.method`` plus its resolved
    parameters, as records carry them once methods exist (default id: the method's name)."""
    return setting_id or method, {**BASE_SETTING, "method": method, "gate": gate, **params}


def record(
    setting_pair: tuple[str, dict],
    domain: str,
    example_id: str,
    correct: bool,
    entropy,
    mode=None,
    p_token=None,
    **measured,
) -> dict:
    """One record; ``mode`` defaults to the gate's decision (latent where H > τ for entropy)."""
    sid, s = setting_pair
    entropy = [float(e) for e in entropy]
    n = len(entropy)
    if mode is None:
        if s["gate"] == "entropy":
            mode = ["latent" if e > s["threshold"] else "token" for e in entropy]
        else:
            mode = ["latent" if s["gate"] == "latent" else "token"] * n
    p_token = [float(np.exp(-e)) for e in entropy] if p_token is None else [float(p) for p in p_token]
    steps = {"mode": list(mode), "token_id": list(range(n)), "entropy": entropy, "p_token": p_token, "p_max": p_token}
    steps.update({k: list(v) for k, v in measured.items()})
    n_latent = sum(m == "latent" for m in mode)
    return {
        "setting": s,
        "setting_id": sid,
        "task": domain,
        "task_spec": f"{domain}:n=1",
        "domain": domain,
        "example_id": example_id,
        "prompt": "Q: ?",
        "completion": "x" * n,
        "answer": "1",
        "prediction": "1" if correct else "0",
        "correct": bool(correct),
        "extraction": "strict",
        "finish_reason": "length",
        "n_steps": n,
        "n_latent": n_latent,
        "steps": steps,
    }


def peaked_sweep(
    peaks: dict[str, float], thresholds, n_examples: int, n_steps: int = 6, seed: int = 0, baselines: bool = True
) -> list[dict]:
    """Per domain, accuracy at τ is 0.9 − 0.2·|τ − peak| (exactly, on the example grid), so the
    best τ of each domain is its peak; token and latent baselines at 0.5 and 0.3."""
    rng = np.random.default_rng(seed)
    records = []
    for domain, peak in peaks.items():
        entropies = rng.uniform(0, 3, size=(n_examples, n_steps))
        pairs = [(setting("entropy", float(t)), max(0.0, 0.9 - 0.2 * abs(t - peak))) for t in thresholds]
        if baselines:
            pairs += [(setting("token"), 0.5), (setting("latent"), 0.3)]
        for pair, accuracy in pairs:
            for i in range(n_examples):
                records.append(record(pair, domain, f"{domain}-{i}", i < round(accuracy * n_examples), entropies[i]))
    return records


def write_run(path: Path, records: list[dict], manifest: dict | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "manifest.json").write_text(json.dumps(manifest or {"config": {"measure": []}}))
    with open(path / "samples.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path
