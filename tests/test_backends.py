"""Choosing a backend on the command line: bad names, misplaced options and refusals are one line, exit 2."""

from __future__ import annotations

import json

import pytest

from test_cli import cli


@pytest.fixture
def dataset(tmp_path):
    path = tmp_path / "sums.jsonl"
    path.write_text("".join(json.dumps({"question": f"{a} + 1 =", "answer": str(a + 1)}) + "\n" for a in range(3)))
    return path


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--backend", "nosuch"], "unknown backend 'nosuch'; valid: hf, vllm"),
        (["--tensor-parallel-size", "2"], "--tensor-parallel-size only applies to --backend vllm"),
        (
            ["--backend", "vllm", "--gate", "entropy", "--threshold", "1", "--latent", "hidden"],
            "--latent hidden is not supported by the vllm backend",
        ),
        (
            ["--backend", "vllm", "--measure", "counterfactual"],
            "--measure counterfactual is not supported by the vllm backend",
        ),
        (
            ["--backend", "vllm", "--gate", "fixed", "--k", "2", "--latent", "soft", "--markers", "<bot>,<eot>"],
            "--markers is not supported by the vllm backend",
        ),
    ],
)
def test_bad_backend_requests_are_one_line_before_anything_is_loaded(
    tmp_path, saved_model, dataset, capsys, monkeypatch, extra, message
):
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "0")  # the runner with the fewest latent modes, on any machine
    out = tmp_path / "run"
    assert cli("run", "--model", saved_model, "--task", dataset, "--out", out, *extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_vllm_missing_is_one_line(tmp_path, saved_model, dataset, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    out = tmp_path / "run"
    assert cli("run", "--model", saved_model, "--task", dataset, "--backend", "vllm", "--out", out) == 2
    err = capsys.readouterr().err
    assert "--backend vllm needs vLLM, which is not installed" in err and err.count("\n") == 1
    assert not out.exists()


def test_the_manifest_records_the_backend(tmp_path, saved_model, dataset):
    out = tmp_path / "run"
    assert cli("run", "--model", saved_model, "--task", dataset, "--max-new-tokens", "4", "--out", out) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["backend"] == {
        "name": "hf",
        "tensor_parallel_size": 1,
        "max_model_len": None,
        "gpu_memory_utilization": None,
        "kv_cache_gib": None,
        "enforce_eager": False,
    }
    assert manifest["model"]["backend"] == "hf"
