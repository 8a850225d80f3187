"""`latentcot models` and `builtin:NAME`: the zoo's built-in and user-trained models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentcot.errors import InputError
from latentcot.zoo import registry
from test_cli import cli, records


@pytest.fixture
def home(tmp_path, monkeypatch, models, tokenizer):
    """A $LATENTCOT_HOME with one complete user model (with a card) and one without weights."""
    monkeypatch.setenv("LATENTCOT_HOME", str(tmp_path / "home"))
    ready = tmp_path / "home" / "models" / "my-adder"
    models["gpt2"].save_pretrained(ready)
    tokenizer.save_pretrained(ready)
    (ready / "card.json").write_text(
        json.dumps({"task": "addition:n=2,digits=1", "method": "cot", "test_accuracy": 0.875, "test_examples": 200})
    )
    broken = tmp_path / "home" / "models" / "half-done"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    return tmp_path / "home"


def test_models_lists_user_models_with_status(home, capsys):
    assert cli("models") == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "builtin:my-adder" in x)
    assert "user" in line and "addition:n=2,digits=1" in line and "cot" in line and "87.5% (n=200)" in line
    assert line.rstrip().endswith("ready")
    half = next(x for x in out.splitlines() if "builtin:half-done" in x)
    assert "incomplete: no weights, tokenizer" in half


def test_a_cards_training_budget_counts_every_curriculum_stage(tmp_path):
    def budget(card):
        return registry.ZooModel("m", "user", tmp_path, card).budget

    config = {"method": "coconut", "steps": 600, "batch_size": 64, "max_stage": 3, "start_stage": 1}
    assert budget({"config": config, "train_seconds": 1500}) == "1800 × 64, 25 min"
    assert budget({"config": {**config, "method": "cot"}, "train_seconds": 90}) == "600 × 64, 2 min"
    assert budget({"config": config}) == budget({}) == "-"  # a card that does not say


def test_builtin_name_loads_a_user_model(home, tmp_path):
    assert registry.resolve("my-adder") == home / "models" / "my-adder"
    out = tmp_path / "run"
    assert (
        cli(
            "run",
            "--model",
            "builtin:my-adder",
            "--task",
            "addition:n=2,digits=1",
            "--limit",
            "2",
            "--max-new-tokens",
            "4",
            "--out",
            out,
        )
        == 0
    )
    assert len(records(out)) == 2
    assert json.loads((out / "manifest.json").read_text())["model"]["model_type"] == "gpt2"


def test_unknown_builtin_lists_the_available_ones(home):
    with pytest.raises(InputError, match="unknown built-in model 'nope'; available: .*my-adder"):
        registry.resolve("nope")


def test_empty_zoo_says_where_models_come_from(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LATENTCOT_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(registry, "BUILTIN_ROOT", tmp_path / "no-builtins")
    assert cli("models") == 0
    assert "latentcot train" in capsys.readouterr().out


def test_a_model_directory_prompt_is_used_unless_one_is_given(home, tmp_path):
    model_dir = home / "models" / "my-adder"
    (model_dir / "prompt.json").write_text(
        json.dumps({"template": "Q {question}\n", "answer_prefix": "Answer:", "answer_format": "Answer: <number>"})
    )
    out = tmp_path / "own"
    assert (
        cli(
            "run",
            "--model",
            "builtin:my-adder",
            "--task",
            "addition:n=2,digits=1",
            "--limit",
            "2",
            "--max-new-tokens",
            "4",
            "--out",
            out,
        )
        == 0
    )
    assert all(r["prompt"].startswith("Q ") and r["prompt"].endswith("=\n") for r in records(out))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["prompt_file"] == str(model_dir / "prompt.json")
    override = tmp_path / "override"
    assert (
        cli(
            "run",
            "--model",
            "builtin:my-adder",
            "--task",
            "addition:n=2,digits=1",
            "--limit",
            "2",
            "--max-new-tokens",
            "4",
            "--prompt",
            Path(__file__).parents[1] / "prompts" / "arithmetic.json",
            "--out",
            override,
        )
        == 0
    )
    assert all(r["prompt"].startswith("Add the numbers") for r in records(override))


def test_every_builtin_model_named_in_the_cli_help_exists(monkeypatch, tmp_path):
    """The help examples are what a new user copies first: each builtin:NAME there must resolve."""
    import re

    from latentcot import cli as cli_module

    monkeypatch.setenv("LATENTCOT_HOME", str(tmp_path / "empty-home"))  # built-in models only
    epilogs = [command.epilog or "" for command in cli_module.app.registered_commands]
    names = set(re.findall(r"builtin:([a-z0-9][a-z0-9.-]*)", "\n".join(epilogs)))  # NAME is a placeholder
    assert names, "the help examples name no built-in model"
    for name in names:
        assert (registry.resolve(name) / "config.json").is_file()
