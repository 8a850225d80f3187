"""The shipped zoo models: complete, loadable, and as accurate on held-out problems as their cards say."""

from __future__ import annotations

import pytest

from latentcot.config import DecodeConfig, GateConfig, LatentConfig, ModelConfig
from latentcot.engine import Engine
from latentcot.gates import make_gate
from latentcot.latent import make_latent
from latentcot.model import load_model
from latentcot.tasks import load_task
from latentcot.zoo.registry import list_models

BUILTIN = {m.name: m for m in list_models() if m.origin == "built-in"}
N = 100  # a reduced test set: enough to tell 99 % from 90 %, fast on a CPU


def accuracy(model, n: int = N) -> float:
    loaded = load_model(ModelConfig(f"builtin:{model.name}", device="cpu"))
    task = load_task(model.card["task"], str(model.path / "prompt.json"))
    examples = task.examples("test", n, 0)
    trained = model.card.get("decode") or {"gate": "token"}
    gate = GateConfig(trained["gate"], k=trained.get("k"), threshold=trained.get("threshold"))
    markers = tuple(trained["markers"]) if trained.get("markers") else None
    traces = Engine(loaded.model, loaded.tokenizer).generate(
        [task.prompt(e) for e in examples],
        make_gate(gate),
        make_latent(LatentConfig(trained.get("latent", "hidden"))),
        DecodeConfig(max_new_tokens=96, markers=markers, stop=task.stop),
    )
    return sum(task.score(e, task.extract(t.completion).prediction) for e, t in zip(examples, traces)) / n


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_model_is_complete_and_matches_its_card(name):
    model = BUILTIN[name]
    assert model.missing == [] and {"task", "method", "test_accuracy", "train_command"} <= model.card.keys()
    measured = accuracy(model)
    assert abs(measured - model.card["test_accuracy"]) < 0.08, (measured, model.card["test_accuracy"])


def test_the_cot_models_without_uncertain_forks_solve_their_tasks():
    cot = [m for m in BUILTIN.values() if m.card.get("method") == "cot" and m.card.get("forks") != "uncertain"]
    assert cot, "no built-in CoT model"
    assert all(m.card["test_accuracy"] >= 0.9 and accuracy(m) >= 0.9 for m in cot)


def uncertain_share(model, n: int = N) -> float:
    """Share of token-CoT decoding steps (greedy, n test problems) whose next-token entropy is above 0.3 nats."""
    loaded = load_model(ModelConfig(f"builtin:{model.name}", device="cpu"))
    task = load_task(model.card["task"], str(model.path / "prompt.json"))
    traces = Engine(loaded.model, loaded.tokenizer).generate(
        [task.prompt(e) for e in task.examples("test", n, 0)],
        make_gate(GateConfig("token")),
        make_latent(LatentConfig("soft")),
        DecodeConfig(max_new_tokens=96, stop=task.stop),
    )
    entropies = [h for t in traces for h in t.entropy]
    return sum(h > 0.3 for h in entropies) / len(entropies)


# Share of token-CoT steps above 0.3 nats, per kind of fork (docs/results.md, "Fork families"): equivalent forks
# at four of ~35 tokens; uncertain forks one to four per solution (1 / 34 ≈ 0.03 up to ≈ 0.11: a wrong child
# ends the solution early); "resolved": a task built with uncertain forks that the model settles by looking
# two facts ahead.
SHARE_BOUNDS = {"equivalent": (0.10, 1.0), "uncertain": (0.02, 0.20), "resolved": (0.0, 0.02)}


def test_fork_families_have_each_kind_of_fork_and_a_latent_twin():
    cots = [m for m in BUILTIN.values() if m.card.get("forks") and m.card["method"] == "cot"]
    assert {m.card["forks"] for m in cots} == set(SHARE_BOUNDS)
    highest = {}
    for cot in cots:  # uncertain at as many steps as the card says, and as its kind of fork implies
        measured = uncertain_share(cot)
        assert abs(measured - cot.card["uncertain_steps"]) < 0.015, (cot.name, measured)
        low, high = SHARE_BOUNDS[cot.card["forks"]]
        assert low <= measured < high, (cot.name, measured)
        highest[cot.card["forks"]] = max(measured, highest.get(cot.card["forks"], 0.0))
        twins = [m for m in BUILTIN.values() if m.card["task"] == cot.card["task"] and m.card["method"] != "cot"]
        assert {"coconut", "soft"} & {m.card["method"] for m in twins}, f"{cot.name} has no latent-trained twin"
    # both kinds of fork that token CoT cannot settle reach 10 % of the steps in at least one family
    assert highest["equivalent"] >= 0.10 and highest["uncertain"] >= 0.10, highest


def test_a_coconut_model_beats_the_nocot_model_of_its_task():
    """The scientific target: all reasoning steps as continuous thoughts (the ``fixed`` gate it was
    trained with) clearly above answering directly, for a model of the same shape and budget."""
    from latentcot.analysis.stats import wilson_interval

    def interval(model):
        card = model.card
        low, high = wilson_interval(round(card["test_accuracy"] * card["test_examples"]), card["test_examples"])
        return float(low), float(high)

    by_task = {}
    for model in BUILTIN.values():
        by_task.setdefault(model.card["task"], {})[model.card["method"]] = model
    beaten = [
        (m["coconut"], m["nocot"])
        for m in by_task.values()
        if {"coconut", "nocot"} <= m.keys() and interval(m["coconut"])[0] > interval(m["nocot"])[1]
    ]
    assert beaten, "no built-in COCONUT model is clearly above the nocot model of its task"
    coconut, nocot = beaten[0]
    assert coconut.card["decode"]["gate"] == "fixed" and coconut.card["decode"]["k"] >= 1
    assert coconut.card["params"] == nocot.card["params"]
    assert accuracy(coconut) >= accuracy(nocot)  # and on the reduced test set, measured now


def test_coconut_table_script_prints_each_member_of_a_family_with_its_interval():
    import subprocess
    import sys
    from pathlib import Path

    family = "prosqa-2hop"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "coconut_table.py"
    done = subprocess.run(
        [sys.executable, str(script), "--family", family, "--limit", "20"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    rows = {line.split()[0]: line for line in done.stdout.splitlines()[1:]}
    assert set(rows) == {f"{family}-{m}" for m in ("nocot", "cot", "coconut")}
    assert "gate=fixed,k=2,latent=hidden" in rows[f"{family}-coconut"] and "97.0 %" in rows[f"{family}-coconut"]
    for line in rows.values():  # accuracy, then a Wilson interval around it
        accuracy, low, high = (float(x.strip("[],%")) for x in line.split()[-5:-2])
        assert low <= accuracy <= high


def test_teacher_forced_script_finds_the_steps_a_model_cannot_take():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "teacher_forced.py"

    def table(name: str) -> dict[str, list[tuple[float, float]]]:
        model = BUILTIN[name]
        done = subprocess.run(
            [
                sys.executable,
                str(script),
                "--model",
                f"builtin:{name}",
                "--task",
                model.card["task"],
                "--examples",
                "60",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        rows = [line.split(":", 1) for line in done.stdout.splitlines()[1:]]
        return {k.strip(): [tuple(map(float, c.split("/"))) for c in v.split()] for k, v in rows}

    for name, lines in [("prosqa-2hop-cot", 2), ("prosqa-3hop-forks-cot", 3)]:  # every gold token is its argmax
        learned = table(name)
        assert list(learned) == [*(f"step {k}" for k in range(1, lines + 1)), "answer"]
        assert min(acc for cells in learned.values() for acc, _ in cells) >= 0.95, name
    # at an uncertain fork (the child of the path's second node, "Every m1 is a ?") the model guesses; every
    # other gold token, the look-ups down the path included, is its argmax
    uncertain = table("prosqa-4hop-forks-cot")
    fork = uncertain["step 2"].pop(5)
    assert fork[0] < 0.8 and fork[1] > 0.5, fork
    assert min(acc for cells in uncertain.values() for acc, _ in cells) >= 0.95
    # dead branches shaped like the path (mimic=1): the person's fork ("Tom is a ?") is a guess as well
    two = table("prosqa-4hop-2forks-cot")
    forks = [two["step 1"].pop(3), two["step 2"].pop(5)]
    assert all(acc < 0.8 and entropy > 0.5 for acc, entropy in forks), forks
    assert min(acc for cells in two.values() for acc, _ in cells) >= 0.95
    # six hops, four shaped dead branches: a guess at each of the first four path nodes, nothing else
    four = table("prosqa-6hop-4forks-cot")
    forks = [four["step 1"].pop(3)] + [four[f"step {k}"].pop(5) for k in (2, 3, 4)]
    assert all(acc < 0.8 and entropy > 0.5 for acc, entropy in forks), forks
    assert min(acc for cells in four.values() for acc, _ in cells) >= 0.95
    # at an equivalent fork the gold order is a draw the model cannot know: the first operand is a guess
    first_operand, *rest = table("sum-any-order-cot")["step 1"]
    assert first_operand[0] < 0.8 and first_operand[1] > 0.5 and rest[0] == (1.0, 0.0)
