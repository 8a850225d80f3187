"""`latentcot demo` over a zoo of built-in models (tiny random ones here, with cards like trained ones)."""

from __future__ import annotations

import csv
import json

import pytest

from latentcot import demo
from latentcot.zoo import registry
from test_cli import cli, records

pytestmark = pytest.mark.slow

PROMPT = {"template": "{question}\n", "answer_prefix": "Answer:", "answer_format": "Answer: <number>"}


@pytest.fixture
def zoo(tmp_path, monkeypatch, models, tokenizer):
    root = tmp_path / "builtin"
    cards = {
        "adder-cot": {"task": "addition:n=2,digits=1", "method": "cot", "decode": {"gate": "token"}},
        "adder-coconut": {
            "task": "addition:n=2,digits=1",
            "method": "coconut",
            "decode": {"gate": "fixed", "k": 2, "latent": "hidden", "markers": ["<bot>", "<eot>"]},
        },
    }
    for name, card in cards.items():
        models["llama"].save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        (root / name / "card.json").write_text(json.dumps(card))
        (root / name / "prompt.json").write_text(json.dumps(PROMPT))
    monkeypatch.setattr(registry, "BUILTIN_ROOT", root)
    monkeypatch.setenv("LATENTCOT_HOME", str(tmp_path / "home"))
    return root


def test_demo_sweeps_every_builtin_model_and_writes_reports(zoo, tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli("demo", "--out", out, "--limit", "3", "--batch-size", "3", "--max-new-tokens", "24") == 0
    printed = capsys.readouterr().out
    for name in ("adder-cot", "adder-coconut"):
        assert f"report ({name}): {out / name / 'report' / 'report.html'}" in printed
        assert (out / name / "report" / "report.html").is_file()
        manifest = json.loads((out / name / "manifest.json").read_text())
        # the answer-level probe where no thought markers are fed; the step probe on COCONUT models
        assert manifest["config"]["measure"] == ([demo.ROLLOUT] if name == "adder-cot" else ["counterfactual"])
        assert manifest["config"]["prompt_file"] == str(zoo / name / "prompt.json")
        assert "method comparison" in printed  # several methods: the report opens with the comparison
    overview = list(csv.DictReader((out / "overview.csv").open()))
    assert [(row["model"], row["domain"]) for row in overview] == [
        ("adder-coconut", "arithmetic"),
        ("adder-cot", "arithmetic"),
    ]
    assert "per model and domain" in printed and "uncertain_steps" in printed
    cot_records = records(out / "adder-cot")
    cot = {r["setting_id"] for r in cot_records}
    # the sweep (5 τ + both baselines), the zero-latent ablation at the middle τ, two published methods
    assert {"token", "latent-soft-lt1", "entropy-0.1nats-zero"} <= cot and len(cot) == 2 + 5 + 1 + 2
    assert {r["setting"].get("method") for r in cot_records} >= {"soft-thinking", "swir"}
    assert all("rollout_changed" in r["steps"] for r in cot_records)
    coconut = records(out / "adder-coconut")
    assert "fixed-k2-zero" in {r["setting_id"] for r in coconut}  # the ablation of the trained decoding
    fixed = [r for r in coconut if r["setting_id"] == "fixed-k2-hidden"]
    assert len(fixed) == 3
    for r in fixed:  # the trained decoding: begin marker, two latents, end marker, then tokens
        assert r["steps"]["mode"][:4] == ["marker", "latent", "latent", "marker"]
    assert all("kl_counterfactual" in r["steps"] for r in coconut)


def test_demo_without_builtin_models_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(registry, "BUILTIN_ROOT", tmp_path / "none")
    assert cli("demo", "--out", tmp_path / "demo") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("latentcot: error:") and "no built-in model" in err and "\n" not in err
    assert not (tmp_path / "demo").exists()
