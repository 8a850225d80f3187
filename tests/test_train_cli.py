"""`latentcot train` on the command line: options generated from TrainConfig, the typed command on
the card, bad input refused before anything is written, --save-dtype applied on --resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import typer
from safetensors import safe_open

from latentcot import cli as cli_module
from latentcot.zoo import train as zoo_train
from latentcot.zoo.data import PROMPT_FILE, TrainConfig, write_prompt_file
from test_cli import cli

# The options `latentcot train` had when they were declared by hand, plus two optimizer settings that
# only TrainConfig had (dropout, dtype and reset_optimizer stay off the command line).
OPTIONS = {
    "--task",
    "-t",
    "--method",
    "--out",
    "-o",
    "--init",
    "--steps",
    "--arch",
    "--hidden",
    "--layers",
    "--heads",
    "--tokenizer",
    "--soft-threshold",
    "--lr",
    "--warmup",
    "--decay",
    "--batch-size",
    "--c",
    "--max-stage",
    "--start-stage",
    "--mix-prob",
    "--eval-every",
    "--eval-examples",
    "--test-examples",
    "--seed",
    "--device",
    "--save-dtype",
    "--resume",
    "--weight-decay",
    "--grad-clip",
    "--eval-task",
}
TINY = [
    "--steps",
    "2",
    "--eval-every",
    "2",
    "--batch-size",
    "4",
    "--eval-examples",
    "2",
    "--test-examples",
    "2",
    "--hidden",
    "32",
    "--layers",
    "1",
    "--heads",
    "2",
]


def _train_command():
    return typer.main.get_command(cli_module.app).commands["train"]


def test_every_option_comes_from_a_trainconfig_field_with_its_default_and_help():
    params = {p.name: p for p in _train_command().params}
    assert {o for p in params.values() for o in p.opts} == OPTIONS
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert set(params) - set(fields) == {"out", "resume"}
    assert set(fields) - set(params) == {"dropout", "dtype", "reset_optimizer"}
    for name, param in params.items():
        if name in fields:
            field = fields[name]
            assert param.help == field.metadata["help"] and field.metadata["help"], name
            assert param.required == (field.default is dataclasses.MISSING), name
            if not param.required:
                assert param.default == field.default, name


def test_options_build_the_config_and_the_card_records_the_command_as_typed(tmp_path, monkeypatch):
    seen = {}

    def fake_train(cfg, out, *, resume, argv):
        seen.update(cfg=cfg, out=out, resume=resume, argv=argv)
        return {"test_accuracy": 0.5, "test_examples": 2}

    monkeypatch.setattr(zoo_train, "train", fake_train)
    out = tmp_path / "m"
    assert (
        cli(
            "train",
            "-t",
            "addition:n=2,digits=1",
            "--method",
            "cot",
            "-o",
            out,
            "--max-stage",
            "3",
            "--lr",
            "0.01",
            "--batch-size",
            "8",
            "--weight-decay",
            "0",
            "--resume",
        )
        == 0
    )
    assert seen["cfg"] == TrainConfig(
        task="addition:n=2,digits=1", method="cot", max_stage=3, lr=0.01, batch_size=8, weight_decay=0.0
    )
    assert seen["out"] == out and seen["resume"] is True
    assert seen["argv"] == [
        "latentcot",
        "train",
        "--task",
        "addition:n=2,digits=1",
        "--method",
        "cot",
        "--out",
        str(out),
        "--resume",
        "--lr",
        "0.01",
        "--weight-decay",
        "0.0",
        "--batch-size",
        "8",
        "--max-stage",
        "3",
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lr", "fast"], "Invalid value for '--lr'"),
        (["--decay", "linear"], "unknown lr decay 'linear'"),
        (["--hidden", "30", "--heads", "4"], "hidden 30 is not divisible by heads 4"),
        (["--reset-optimizer"], "No such option: --reset-optimizer"),
    ],
)
def test_a_bad_option_is_one_line_and_nothing_written(tmp_path, capsys, args, message):
    out = tmp_path / "m"
    assert cli("train", "--task", "addition", "--method", "cot", "--out", out, *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("latentcot: error:") and message in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    "bad, where",
    [
        ("", "data.jsonl: no examples in file"),
        ('{"question": "1 + 2 ="}\n', "data.jsonl:1: missing field 'answer'"),
    ],
)
def test_a_bad_task_file_writes_nothing_so_the_same_command_runs_once_it_is_fixed(tmp_path, capsys, bad, where):
    data, out = tmp_path / "data.jsonl", tmp_path / "model"
    command = ["train", "--task", data, "--method", "cot", "--out", out, *TINY]
    data.write_text(bad)
    assert cli(*command) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("latentcot: error:") and where in err, err
    assert not out.exists()

    out.mkdir()  # an empty directory is as good as none
    assert cli(*command) == 2 and not any(out.iterdir())

    rows = [{"question": f"{a} + {b} =", "answer": str(a + b)} for a, b in [(1, 2), (3, 4), (5, 6)]]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert cli(*command) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["task"] == str(data) and card["test_examples"] == 2


@pytest.mark.parametrize(
    "prompt, message",
    [
        ("{}", "prompt file: field 'template' must be a non-empty string"),
        (None, "cannot load a tokenizer"),  # a valid prompt, but the model directory has no tokenizer
    ],
)
def test_a_bad_init_model_writes_nothing(tmp_path, capsys, prompt, message):
    init, out = tmp_path / "init", tmp_path / "model"
    init.mkdir()
    (init / "config.json").write_text(json.dumps({"model_type": "llama"}))
    if prompt is None:
        write_prompt_file(init)
    else:
        (init / PROMPT_FILE).write_text(prompt)
    assert cli("train", "--task", "addition", "--method", "coconut", "--init", init, "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("latentcot: error:") and message in err, err
    assert not out.exists()


def test_save_dtype_applies_on_resume(tmp_path):
    out = tmp_path / "model"
    command = ["train", "--task", "addition:n=2,digits=1", "--method", "cot", "--out", out, *TINY]
    assert cli(*command) == 0
    assert cli(*command, "--resume", "--save-dtype", "float16") == 0
    card = json.loads((out / "card.json").read_text())
    assert card["config"]["save_dtype"] == "float16"
    assert "--resume" in card["train_command"] and "--save-dtype float16" in card["train_command"]
    with safe_open(out / "model.safetensors", "pt") as weights:
        assert {weights.get_tensor(name).dtype for name in weights.keys()} == {torch.float16}


def test_init_takes_a_builtin_model_by_name(tmp_path, capsys):
    from latentcot.zoo.registry import resolve

    cfg = TrainConfig(task="prosqa:hops=2,dead=0,distract=1,extra=0", method="cot", init="builtin:prosqa-2hop-cot")
    assert cfg.init == str(resolve("prosqa-2hop-cot")) and (Path(cfg.init) / "config.json").is_file()
    out = tmp_path / "model"
    assert cli("train", "--task", "addition", "--method", "cot", "--init", "builtin:no-such-model", "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown built-in model 'no-such-model'" in err and not out.exists()


def _sums_file(path: Path, pairs) -> Path:
    path.write_text("".join(json.dumps({"question": f"{a} + {b} =", "answer": str(a + b)}) + "\n" for a, b in pairs))
    return path


def test_a_task_file_trains_on_all_its_examples_and_is_measured_on_the_eval_task(tmp_path):
    train = _sums_file(tmp_path / "train.jsonl", [(a, b) for a in range(1, 6) for b in range(1, 4)])  # 15
    held_out = _sums_file(tmp_path / "valid.jsonl", [(7, 8), (9, 9), (6, 7)])
    out = tmp_path / "model"
    command = ["train", "--task", train, "--eval-task", held_out, "--method", "cot", "--out", out, *TINY]
    assert cli(*command) == 0
    card = json.loads((out / "card.json").read_text())
    # test examples from the held-out file (its 3, not the train file's first 2), the train file as the task
    assert card["task"] == str(train) and card["eval_task"] == str(held_out) and card["test_examples"] == 2

    cfg = TrainConfig(task=str(train), method="cot", batch_size=4, seed=3)
    task = zoo_train.load_task(str(train))
    batches = [[e.question for e in zoo_train._train_examples(cfg, task, step)] for step in range(8)]
    first_epoch = [q for batch in batches[:4] for q in batch][:15]  # 15 examples, batches of 4
    assert sorted(first_epoch) == sorted(e.question for e in task.examples("train", None, 0))
    assert batches[0] != batches[1] and batches == [
        [e.question for e in zoo_train._train_examples(cfg, task, step)] for step in range(8)
    ]  # a pure function of (seed, step): a resumed run draws the same batches


def test_epoch_order_visits_every_index_once_per_epoch_in_a_new_order():
    n, seed = 10, 5
    walk = zoo_train.epoch_order(n, seed, 0, 3 * n)
    epochs = [walk[i * n : (i + 1) * n] for i in range(3)]
    assert all(sorted(e) == list(range(n)) for e in epochs) and epochs[0] != epochs[1]
    assert zoo_train.epoch_order(n, seed, 7, 9) == walk[7:16]  # any window of the same walk
    assert zoo_train.epoch_order(n, seed + 1, 0, n) != epochs[0]


def test_an_eval_task_the_tokenizer_cannot_write_is_refused_before_anything_is_written(tmp_path, capsys):
    train = _sums_file(tmp_path / "train.jsonl", [(1, 2), (3, 4), (2, 2)])
    held_out = tmp_path / "valid.jsonl"
    held_out.write_text(json.dumps({"question": "x + y =", "answer": "z"}) + "\n")  # letters: not in train
    out = tmp_path / "model"
    assert cli("train", "--task", train, "--eval-task", held_out, "--method", "cot", "--out", out, *TINY) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot write" in err and "valid.jsonl" in err, err
    assert not out.exists()
