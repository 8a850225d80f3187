"""The Ray executor on a local CPU cluster: the local executor's records, a worker killed mid-run, a killed
driver resumed.

Skipped when Ray is not installed, unless LATENTCOT_REQUIRE_RAY is set (``make test`` sets it), in which
case a missing Ray fails. Models decode in float64: a Ray actor runs torch on one thread, the driver on
several, and in float32 the summation order shows in the last bits (amplified by latent feedback).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest

if importlib.util.find_spec("ray") is None and not os.environ.get("LATENTCOT_REQUIRE_RAY"):
    pytest.skip("Ray is not installed (LATENTCOT_REQUIRE_RAY unset)", allow_module_level=True)

from latentcot.config import ExecutorConfig, ModelConfig  # noqa: E402
from latentcot.executors import LocalExecutor, RayExecutor, Worker, make_units, setting_families  # noqa: E402
from latentcot.experiment import Plan, load_examples  # noqa: E402
from latentcot.grid import sweep_settings  # noqa: E402
from test_cli import cli, records  # noqa: E402

pytestmark = pytest.mark.slow
SWEEP = ["--task", "addition:n=2,digits=1", "--limit", "6", "--thresholds", "2.8:3.6:0.4", "--latent", "soft"]
SWEEP += ["--max-new-tokens", "12", "--batch-size", "2", "--dtype", "float64"]


def by_key(rows):
    keyed = {(r["task_spec"], r["setting_id"], r["example_id"]): r for r in rows}
    assert len(keyed) == len(rows)  # every record once
    return keyed


def signal_when_written(driver: subprocess.Popen, samples, lines: int, signum: int) -> None:
    """Send ``signum`` to ``driver`` once ``samples`` has ``lines`` records (the driver must still run)."""
    deadline = time.monotonic() + 180
    while (not samples.exists() or samples.read_bytes().count(b"\n") < lines) and time.monotonic() < deadline:
        assert driver.poll() is None, "the driver ended before the signal; give it more work"
        time.sleep(0.05)
    driver.send_signal(signum)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, saved_model):
    out = tmp_path_factory.mktemp("local") / "run"
    assert cli("sweep", "--model", saved_model, *SWEEP, "--out", out) == 0
    return by_key(records(out))


def test_two_ray_workers_write_the_local_executors_records(local_run, saved_model, tmp_path):
    out = tmp_path / "run"
    assert cli("sweep", "--model", saved_model, *SWEEP, "--executor", "ray", "--workers", "2", "--out", out) == 0
    assert by_key(records(out)) == local_run
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["executor"] == {"kind": "ray", "workers": 2, "gpus_per_worker": 0.0, "address": None}
    assert manifest["finished_at"]


def test_the_driver_never_loads_the_weights_and_a_workers_refusal_is_one_line(
    local_run, saved_model, tmp_path, monkeypatch, capsys
):
    import latentcot.model

    class NoWeights:  # the workers are other processes: only this (the driver's) load is refused
        @staticmethod
        def from_pretrained(*args, **kwargs):
            raise AssertionError("the driver loaded the model's weights")

    monkeypatch.setattr(latentcot.model, "AutoModelForCausalLM", NoWeights)
    out = tmp_path / "run"
    assert cli("sweep", "--model", saved_model, *SWEEP, "--executor", "ray", "--workers", "1", "--out", out) == 0
    assert by_key(records(out)) == local_run
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["n_parameters"] > 0 and manifest["model"]["device"] == "cpu"  # as the worker loaded it

    capsys.readouterr()
    refused = tmp_path / "refused"  # markers the tokenizer splits: the worker refuses, the driver says why
    assert cli("sweep", "--model", saved_model, *SWEEP, "--markers", "<nope>,<nah>", "--executor", "ray",
               "--workers", "1", "--out", refused) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--markers <nope>,<nah>" in err[0] and "single token" in err[0]
    assert not refused.exists() or not any(refused.iterdir())


def test_a_worker_killed_mid_run_has_its_unit_decoded_again(saved_model):
    from latentcot.config import DecodeConfig, LatentConfig

    decode = DecodeConfig(max_new_tokens=12)
    settings = tuple(sweep_settings([2.8, 3.2, 3.6], [LatentConfig("soft")], decode))
    plan = Plan(ModelConfig(str(saved_model), dtype="float64"), ("addition:n=2,digits=1",), settings, limit=8)
    tasks = load_examples(plan)
    families = setting_families(plan.settings, share=True)
    units = make_units(tasks, plan.settings, families, set(), batch_size=1)  # 8 units
    from latentcot.backends import load_backend

    engine = load_backend(plan.model, plan.backend).engine
    want = {}
    for result in LocalExecutor(Worker(engine, tasks, plan.settings, families, seed=0, max_rows=8)).run(units):
        want.update(by_key(result.records))

    runner = RayExecutor(ExecutorConfig("ray", workers=2), plan, families, max_rows=8)
    try:
        pids = runner.worker_pids()
        got, killed = {}, None
        for result in runner.run(units):
            got.update(by_key(result.records))
            if killed is None:  # the other worker is decoding a unit right now: kill it
                killed = next(pid for pid in pids if pid != result.worker)
                os.kill(killed, signal.SIGKILL)
        assert runner.retried >= 1 and killed not in runner.worker_pids()
    finally:
        runner.close()
    assert got == want


def test_a_killed_driver_resumes_with_either_executor(local_run, saved_model, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "run"
    command = [sys.executable, "-m", "latentcot", "sweep", "--model", str(saved_model), *SWEEP, "--out", str(out)]
    ray_args = ["--executor", "ray", "--workers", "2"]
    driver = subprocess.Popen(command + ray_args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = out / "samples.jsonl"
    signal_when_written(driver, samples, 4, signal.SIGKILL)
    driver.wait()
    partial = samples.read_bytes().count(b"\n")
    assert 0 < partial < len(local_run)
    resumed = subprocess.run(command + ray_args + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert by_key(records(out)) == local_run
    # and the local executor resumes a run the ray executor started (nothing left to do: no new line)
    again = subprocess.run(command + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert by_key(records(out)) == local_run


def test_ctrl_c_stops_the_workers_and_leaves_a_resumable_run(saved_model, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "run"
    longer = [*SWEEP, "--limit", "60", "--batch-size", "1"]  # 300 records: still running when interrupted
    command = [sys.executable, "-m", "latentcot", "sweep", "--model", str(saved_model), *longer, "--out", str(out)]
    command += ["--executor", "ray", "--workers", "2"]
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    signal_when_written(driver, out / "samples.jsonl", 2, signal.SIGINT)
    _, stderr = driver.communicate(timeout=60)
    assert driver.returncode == 130 and "interrupted" in stderr and "--resume" in stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["finished_at"] is None and 0 < len(records(out)) < 300
    resumed = subprocess.run(command + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert len(by_key(records(out))) == 300  # every (example, setting) once
