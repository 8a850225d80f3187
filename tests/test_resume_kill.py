"""A sweep killed with SIGKILL and resumed ends with exactly the records of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow


def sweep_command(model, out):
    return [
        sys.executable,
        "-m",
        "latentcot",
        "sweep",
        "--model",
        str(model),
        "--task",
        "addition:n=2,digits=1",
        "--task",
        "addition:n=3,digits=1",
        "--limit",
        "8",
        "--thresholds",
        "2.8:3.6:0.2",
        "--latent",
        "soft",
        "--max-new-tokens",
        "24",
        "--batch-size",
        "1",
        "--out",
        str(out),
    ]


def line_count(path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_sigkill_mid_sweep_then_resume_equals_an_uninterrupted_run(tmp_path, saved_model):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    total = 2 * 8 * (5 + 2)
    killed = tmp_path / "killed"
    samples = killed / "samples.jsonl"
    proc = subprocess.Popen(
        sweep_command(saved_model, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while line_count(samples) < total // 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the sweep finished before it could be killed; give it more work"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = line_count(samples)
    assert 0 < partial < total
    assert json.loads((killed / "manifest.json").read_text())["finished_at"] is None

    resumed = subprocess.run(
        sweep_command(saved_model, killed) + ["--resume"], env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    whole = tmp_path / "whole"
    straight = subprocess.run(sweep_command(saved_model, whole), env=env, capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr

    rows = [json.loads(line) for line in samples.read_text().splitlines()]  # every line valid JSON
    keys = [(r["task_spec"], r["setting_id"], r["example_id"]) for r in rows]
    assert len(keys) == len(set(keys)) == total  # each pair exactly once
    assert samples.read_bytes() == (whole / "samples.jsonl").read_bytes()  # and the same records
    manifest = json.loads((killed / "manifest.json").read_text())
    assert manifest["finished_at"] and len(manifest["resumed_at"]) == 1


def test_a_resume_while_the_first_writer_runs_is_refused_or_waits(tmp_path, saved_model):
    """The reported failure: a --resume started during a run made every record appear twice."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "run"
    samples = out / "samples.jsonl"
    first = subprocess.Popen(
        sweep_command(saved_model, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while line_count(samples) < 5 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert first.poll() is None, "the sweep finished before the second writer started; give it more work"
    second = subprocess.run(
        sweep_command(saved_model, out) + ["--resume"], env=env, capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 2
    assert second.stderr.count("\n") == 1 and f"being written by pid {first.pid}" in second.stderr
    waiting = subprocess.run(
        sweep_command(saved_model, out) + ["--resume", "--wait"], env=env, capture_output=True, text=True, timeout=300
    )
    assert waiting.returncode == 0, waiting.stderr  # (whether it had to wait depends on timing; see test_store_lock)
    assert first.wait(60) == 0
    keys = [
        (r["task_spec"], r["setting_id"], r["example_id"]) for r in map(json.loads, samples.read_text().splitlines())
    ]
    assert len(keys) == len(set(keys)) == 2 * 8 * (5 + 2)  # every record once
