"""--measure rollout: answer-level branches as probe arms of the decode tree, their records and analysis."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from latentcot.analysis.answer_loss import answer_loss_bins, answer_loss_trend
from latentcot.analysis.stats import AnalysisOptions
from latentcot.config import DecodeConfig
from latentcot.engine import Engine
from latentcot.errors import InputError
from latentcot.gates import EntropyGate, SwiReasoningGate, TokenGate
from latentcot.latent import SoftLatent
from latentcot.rollout import ProbeGate, RolloutSpec, fork_step, parse_rollout
from latentcot.tree import Arm
from test_cli import cli, records

PROMPTS = ["12+7=", "Every cat is a mammal. Is Tom a cat?", "x", "3*4="]
SEEDS = [5, 6, 7, 8]


class ForcedAt:
    """The literal intervention: ``gate``, except a latent at step ``t``."""

    def __init__(self, gate, t):
        self.gate, self.t = gate, t

    def start(self, batch, device):
        return self.gate.start(batch, device)

    def __call__(self, view, state=None):
        wish = self.gate(view, state)
        return wish | torch.full_like(wish, view.step == self.t)


def qualifying(trace, spec: RolloutSpec) -> list[int]:
    return [
        t
        for t, (mode, h) in enumerate(zip(trace.mode, trace.entropy))
        if mode == "token" and t % spec.every == 0 and h >= spec.min_entropy
    ]


@pytest.mark.parametrize(
    "gate, spec",
    [
        (TokenGate(), RolloutSpec(every=1, max=3)),
        (EntropyGate(3.4), RolloutSpec(every=2, max=4)),
        (EntropyGate(3.4), RolloutSpec(every=1, max=2, min_entropy=3.3)),
        (SwiReasoningGate(window=2), RolloutSpec(every=1, max=2)),
    ],
    ids=["token", "entropy-every2", "entropy-floor", "swir"],
)
@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
def test_each_branch_is_the_trajectory_with_one_latent_forced(models64, tokenizer, gate, spec, sampled):
    engine = Engine(models64["llama"], tokenizer)
    cfg = DecodeConfig(max_new_tokens=14, temperature=1.0 if sampled else 0.0, ignore_eos=True)
    latent = SoftLatent()
    arms = [Arm(gate, latent)] + [Arm(ProbeGate(gate, n, spec), latent) for n in range(spec.max)]
    tree = engine.decode_tree(PROMPTS, arms, cfg, SEEDS)
    fired = 0
    for i in range(len(PROMPTS)):
        main = tree.traces[(i, 0)]
        (alone,) = engine.generate([PROMPTS[i]], gate, latent, cfg, seed=[SEEDS[i]])
        assert main.mode == alone.mode and main.token_id == alone.token_id  # probes change nothing of the record
        forks = [fork_step(main.mode, tree.traces[(i, 1 + n)].mode) for n in range(spec.max)]
        assert [t for t in forks if t is not None] == qualifying(main, spec)[: spec.max]
        for n, t in enumerate(forks):
            branch = tree.traces[(i, 1 + n)]
            if t is None:
                assert branch.mode == main.mode and branch.token_id == main.token_id
                continue
            fired += 1
            (forced,) = engine.generate([PROMPTS[i]], ForcedAt(gate, t), latent, cfg, seed=[SEEDS[i]])
            assert branch.mode == forced.mode and branch.token_id == forced.token_id, (i, n, t)
            assert branch.completion == forced.completion
    assert fired >= len(PROMPTS)


def test_rollout_specs_parse_and_refuse():
    assert parse_rollout(("counterfactual",)) is None
    assert parse_rollout(("rollout",)) == RolloutSpec()
    assert parse_rollout(("rollout:every=3,max=2,min_entropy=0.5",)) == RolloutSpec(3, 2, 0.5)
    for bad, message in [
        ("rollout:every=0", "every must be an integer >= 1"),
        ("rollout:max=-1", "max must be an integer >= 1"),
        ("rollout:min_entropy=-2", "min_entropy must be a number >= 0"),
        ("rollout:often=2", "bad rollout parameter"),
        ("rollout:every=two", "bad value 'two' for rollout every"),
    ]:
        with pytest.raises(InputError, match=message):
            parse_rollout((bad,))


@pytest.fixture(scope="module")
def rollout_run(tmp_path_factory, saved_model):
    base = tmp_path_factory.mktemp("rollout")
    args = ["--model", saved_model, "--task", "addition:n=2,digits=1", "--limit", "6", "--thresholds", "3.4"]
    args += ["--latent", "soft", "--max-new-tokens", "12", "--dtype", "float64"]
    assert cli("sweep", *args, "--measure", "rollout:every=2,max=3", "--out", base / "with") == 0
    assert cli("sweep", *args, "--out", base / "without") == 0
    return base / "with", base / "without"


def test_rollout_records_add_per_step_answers_and_nothing_else(rollout_run):
    with_, without = (records(run) for run in rollout_run)
    keyed = {(r["setting_id"], r["example_id"]): r for r in without}
    probed = 0
    for r in with_:
        steps = dict(r["steps"])
        changed, correct = steps.pop("rollout_changed"), steps.pop("rollout_correct")
        plain = keyed[(r["setting_id"], r["example_id"])]
        assert {**r, "steps": steps} == plain  # the record itself is the run's without rollout
        want = [t for t, m in enumerate(steps["mode"]) if m == "token" and t % 2 == 0][:3]
        assert [t for t, c in enumerate(changed) if c is not None] == want
        assert all((c is None) == (k is None) for c, k in zip(changed, correct))
        probed += len(want)
    assert probed > 0
    manifest = json.loads((rollout_run[0] / "manifest.json").read_text())
    assert manifest["decode_cost"]["forward_rows"] > manifest["decode_cost"]["plain_rows"]


def test_rollout_is_analyzed(rollout_run, capsys):
    capsys.readouterr()
    assert cli("analyze", rollout_run[0]) == 0
    out = capsys.readouterr().out
    assert "answer-level loss vs entropy" in out
    report = rollout_run[0] / "report"
    assert (report / "answer_loss_vs_entropy.png").is_file()
    trend = pd.read_csv(report / "answer_loss_trend.csv")
    assert trend["n"].sum() == sum(
        c is not None for r in records(rollout_run[0]) for c in r["steps"]["rollout_changed"]
    )
    assert cli("analyze", rollout_run[1]) == 0  # the run without: said, not drawn
    summary = (rollout_run[1] / "report" / "summary.md").read_text()
    assert "answer-level loss vs entropy: not measured (run with --measure rollout)" in summary


def test_bad_rollout_input_is_one_line_exit_2(tmp_path, saved_model, capsys):
    args = ["--model", saved_model, "--task", "addition:n=2,digits=1", "--limit", "2", "--max-new-tokens", "4"]
    for extra, message in [
        (["--measure", "rollout:every=0"], "every must be an integer >= 1"),
        (["--measure", "rollout:max=x"], "bad value 'x' for rollout max"),
        (["--measure", "counterfactual:every=2"], "unknown measurement"),
        (
            ["--measure", "rollout", "--gate", "fixed", "--k", "2", "--markers", "<bot>,<eot>"],
            "without thought markers",
        ),
    ]:
        capsys.readouterr()
        out = tmp_path / "run"
        assert cli("run", *args, *extra, "--out", out) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (extra, err)
        assert not out.exists()


def _frame(entropy, changed, domain="d"):
    n = len(entropy)
    steps = pd.DataFrame(
        {
            "task_spec": "t",
            "setting_id": "s",
            "example_id": [f"e{i // 2}" for i in range(n)],
            "domain": domain,
            "step": [i % 2 for i in range(n)],
            "mode": "token",
            "entropy": entropy,
            "rollout_changed": changed,
            "rollout_correct": [0.0] * n,
        }
    )
    samples = steps.drop_duplicates("example_id")[["task_spec", "setting_id", "example_id"]].assign(correct=True)
    return samples, steps


def test_answer_loss_tables_follow_constructed_data():
    rng = np.random.default_rng(0)
    entropy = rng.uniform(0, 2, 400)
    changed = (rng.uniform(0, 2, 400) < entropy).astype(float)  # P(change) = H / 2
    samples, steps = _frame(entropy, changed)
    options = AnalysisOptions(n_boot=200)
    trend = answer_loss_trend(samples, steps, options).iloc[0]
    assert 0.35 < trend["slope"] < 0.65 and trend["slope_lo"] < 0.5 < trend["slope_hi"]
    assert trend["rho"] > 0.3 and trend["lo"] > 0
    bins = answer_loss_bins(samples, steps, options)
    assert (bins["p_changed"].diff().dropna() > -0.25).all() and bins["n"].sum() == 400
    assert (bins["delta_correct"] == -1).all()  # every branch wrong, every record right
    flat_samples, flat_steps = _frame(entropy, np.zeros(400))
    assert answer_loss_trend(flat_samples, flat_steps, options).iloc[0]["slope"] == 0
