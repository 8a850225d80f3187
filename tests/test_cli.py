"""`latentcot run` end to end on a saved tiny model and a JSONL file; bad input is one line, exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from transformers import AutoConfig, AutoModelForMaskedLM

from latentcot.cli import main

REQUIRED = {
    "setting",
    "setting_id",
    "task",
    "domain",
    "example_id",
    "prompt",
    "completion",
    "answer",
    "prediction",
    "correct",
    "n_steps",
    "n_latent",
    "steps",
}
STEP_FIELDS = {"mode", "token_id", "entropy", "p_token", "p_max"}


def cli(*args: str) -> int:
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code
    return 0


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]


def test_run_writes_the_record_contract(tmp_path, saved_model, dataset):
    out = tmp_path / "run"
    assert (
        cli(
            "run",
            "--model",
            saved_model,
            "--task",
            dataset,
            "--gate",
            "entropy",
            "--threshold",
            "3.5",
            "--latent",
            "soft",
            "--max-new-tokens",
            "12",
            "--batch-size",
            "2",
            "--out",
            out,
        )
        == 0
    )
    rows = records(out)
    assert len(rows) == 5 and len({r["example_id"] for r in rows}) == 5
    for row in rows:
        assert REQUIRED <= row.keys() and STEP_FIELDS <= row["steps"].keys()
        assert all(len(v) == row["n_steps"] for v in row["steps"].values())
        assert row["n_latent"] == row["steps"]["mode"].count("latent") == row["completion"].count("⟨latent⟩")
        assert row["setting"]["gate"] == "entropy" and row["setting"]["threshold"] == 3.5
        assert row["setting_id"] == "entropy-3.5nats-soft-lt1"
    assert any(r["n_latent"] > 0 for r in rows) and any(r["n_latent"] < r["n_steps"] for r in rows)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["model_type"] == "llama" and manifest["finished_at"]
    assert {"command", "config", "seed", "versions", "git_commit", "device", "started_at"} <= manifest.keys()


def test_registered_tasks_with_different_parameters_share_a_run(tmp_path, saved_model):
    out = tmp_path / "run"
    assert (
        cli(
            "run",
            "--model",
            saved_model,
            "--task",
            "addition:n=2,digits=1",
            "--task",
            "addition:n=3,digits=1",
            "--limit",
            "2",
            "--max-new-tokens",
            "6",
            "--out",
            out,
        )
        == 0
    )
    rows = records(out)
    assert (
        sorted(r["task_spec"] for r in rows)
        == ["addition:n=2,digits=1,reverse=0"] * 2 + ["addition:n=3,digits=1,reverse=0"] * 2
    )
    assert {r["task"] for r in rows} == {"addition"} and {r["domain"] for r in rows} == {"arithmetic"}
    assert all(r["prompt"].rstrip().endswith("Solution:") for r in rows)


def test_batch_size_does_not_change_records(tmp_path, saved_model, dataset):
    common = [
        "--model",
        saved_model,
        "--task",
        dataset,
        "--gate",
        "entropy",
        "--threshold",
        "3.4",
        "--temperature",
        "0.8",
        "--max-new-tokens",
        "10",
    ]
    assert cli("run", *common, "--batch-size", "5", "--out", tmp_path / "a") == 0
    assert cli("run", *common, "--batch-size", "2", "--out", tmp_path / "b") == 0
    strip = lambda rs: sorted((r["example_id"], r["completion"], r["steps"]["mode"]) for r in rs)  # noqa: E731
    assert strip(records(tmp_path / "a")) == strip(records(tmp_path / "b"))


def test_resume_completes_a_truncated_run(tmp_path, saved_model, dataset):
    args = ["run", "--model", saved_model, "--task", dataset, "--max-new-tokens", "8", "--batch-size", "2"]
    assert cli(*args, "--out", tmp_path / "full") == 0
    full = (tmp_path / "full" / "samples.jsonl").read_text()
    lines = full.splitlines(keepends=True)
    partial = tmp_path / "partial"
    assert cli(*args, "--out", partial) == 0
    (partial / "samples.jsonl").write_text("".join(lines[:2]) + lines[2][:17])  # two records and a torn one
    assert cli(*args, "--out", partial, "--resume") == 0
    assert (partial / "samples.jsonl").read_text() == full
    assert cli(*args, "--out", partial) == 2  # not empty, no --resume
    assert cli(*args, "--out", partial, "--resume", "--max-new-tokens", "9") == 2  # config changed


def bad_inputs(tmp_path, saved_model, dataset, models, tokenizer):
    bert = tmp_path / "bert"
    config = AutoConfig.for_model(
        "bert",
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    AutoModelForMaskedLM.from_config(config).save_pretrained(bert)
    tokenizer.save_pretrained(bert)
    no_tokenizer = tmp_path / "no-tok"
    models["gpt2"].save_pretrained(no_tokenizer)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "1+1=", "answer": "2"}\n{"question": "2+2=", "answer": \n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    taus = tmp_path / "taus.json"
    taus.write_text('{"*": 1.0}')
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    base = ["--model", saved_model, "--task", dataset]
    return {
        "missing model dir": (["--model", tmp_path / "nope", "--task", dataset], "does not exist"),
        "not a causal LM": (["--model", bert, "--task", dataset], "not a causal language model"),
        "missing tokenizer": (["--model", no_tokenizer, "--task", dataset], "cannot load a tokenizer"),
        "unknown gate": (
            [*base, "--gate", "sometimes"],
            "unknown gate 'sometimes'; valid: token, latent, entropy, fixed",
        ),
        "unknown latent": ([*base, "--latent", "mean"], "unknown latent mode 'mean'; valid: hidden"),
        "negative threshold": ([*base, "--gate", "entropy", "--threshold", "-1"], "threshold must be a number >= 0"),
        "nan threshold": ([*base, "--gate", "entropy", "--threshold", "nan"], "threshold must be a number >= 0"),
        "malformed dataset": (["--model", saved_model, "--task", broken], f"{broken}:2"),
        "empty dataset": (["--model", saved_model, "--task", empty], "no examples"),
        "unknown hub model offline": (["--model", "no-such-org/no-such-model", "--task", dataset], "cannot load model"),
        "unknown task": ([*base[:2], "--task", "sudoku"], "unknown task 'sudoku'; valid tasks: addition, phop"),
        "threshold map for another gate": ([*base, "--threshold-map", taus], "only applies to the entropy gate"),
        "out is a file": ([*base, "--out", a_file], "is a file"),
        "prompt longer than the context": ([*base, "--max-new-tokens", "600"], "exceeds the model's context of 512"),
        "not an integer": ([*base, "--limit", "many"], "Invalid value for '--limit'"),
    }


def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, saved_model, dataset, models, tokenizer, capsys):
    for name, (args, message) in bad_inputs(tmp_path, saved_model, dataset, models, tokenizer).items():
        out = [] if "--out" in map(str, args) else ["--out", tmp_path / f"out-{name}"]
        capsys.readouterr()
        assert cli("run", *args, *out) == 2, name
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("latentcot: error:"), (name, err)
        assert message in err, (name, err)
        assert "Traceback" not in err
        assert not (tmp_path / f"out-{name}").exists(), name


def test_subprocess_exit_status_and_no_traceback(tmp_path, dataset):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "latentcot",
            "run",
            "--model",
            str(tmp_path / "missing"),
            "--task",
            str(dataset),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr
    assert not (tmp_path / "out").exists()
