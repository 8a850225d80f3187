"""The helpers of benchmarks/looped.py: the grid, learning curves, the α·ln D + β fits, the table."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from latentcot.errors import InputError

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def imported(filename: str):
    """A benchmark script as a module, registered while in use (its dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{Path(filename).stem}", BENCHMARKS / filename)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture(scope="module")
def script():
    yield from imported("looped.py")


def test_the_grid_has_the_papers_cells_and_families(script):
    cells = script.grid(quick=False)
    assert [c.name for c in cells] == ["1⊗1", "2⊗1", "4⊗1", "8⊗1", "1⊗2", "1⊗4", "1⊗8", "2⊗2", "2⊗4", "2⊗8"]
    by_name = {c.name: c for c in cells}
    assert by_name["1⊗1"].families == ["base k⊗1", "1⊗L"]  # the L = 1 point of the 1⊗L family too
    assert by_name["4⊗1"].families == ["base k⊗1"]
    assert by_name["2⊗4"].families == ["2⊗L"] and by_name["2⊗4"].depth == 8 and by_name["2⊗4"].folder == "2x4"


def test_learning_curve_and_the_step_a_cell_broke_through(script, tmp_path):
    rows = [
        {"step": 500 * i, "stage": 0, "loss": 0.5 / i, "valid_accuracy": acc, "valid_examples": 200}
        for i, acc in enumerate([0.01, 0.09, 0.62, 0.97], start=1)
    ]
    (tmp_path / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    curve = script.learning_curve(tmp_path)
    assert curve["step"].tolist() == [500, 1000, 1500, 2000]
    assert script.first_step_reaching(curve, 0.5) == 1500
    assert script.first_step_reaching(curve, 0.95) == 2000
    assert script.first_step_reaching(curve, 0.99) is None
    assert script.learning_curve(tmp_path / "missing").empty  # a cell trained without checks


def test_fit_recovers_a_known_log_law_per_family(script):
    cells = script.grid(quick=False)

    def accuracy(cell):  # 0.1·ln D + 0.3, but looping the 2-layer block gains twice as fast per loop
        return 0.1 * np.log(2) + 0.3 + 0.2 * np.log(cell.L) if cell.k == 2 else 0.1 * np.log(cell.depth) + 0.3

    rows = pd.DataFrame(
        [{"task": "t", "cell": c.name, "family": c.families, "depth": c.depth, "accuracy": accuracy(c)} for c in cells]
    )
    fits = script.fit(rows).set_index("family")
    for family, alpha, beta in [("base k⊗1", 0.1, 0.3), ("1⊗L", 0.1, 0.3), ("2⊗L", 0.2, 0.3 - 0.1 * np.log(2))]:
        assert fits.loc[family, ["alpha", "beta"]].tolist() == pytest.approx([alpha, beta])
        assert fits.loc[family, "points"] == 4


def test_markdown_names_every_cell_with_its_budget_and_breakthrough(script):
    rows = pd.DataFrame(
        [
            {
                "task": "t",
                "cell": "1⊗1",
                "depth": 1,
                "params": 1000,
                "steps": 6000,
                "lr": 3e-3,
                "seconds": 12.0,
                "accuracy": 0.25,
                "answer_characters": [0.5, 1.0],
                "steps_to_half": None,
            },
            {
                "task": "t",
                "cell": "1⊗2",
                "depth": 2,
                "params": 1000,
                "steps": 6000,
                "lr": 1.5e-3,
                "seconds": 20.0,
                "accuracy": 0.9,
                "answer_characters": [0.9, 1.0],
                "steps_to_half": 2500.0,
            },
        ]
    )
    text = script.markdown(rows, pd.DataFrame(columns=["task", "family", "alpha", "beta", "points"]))
    assert "| 1⊗1 | 1 | 1,000 | 25.0% [50% 100%] (6000 steps at lr 0.003, 12 s) |" in text
    assert "| 1⊗2 | 2 | 1,000 | 90.0% [90% 100%] (6000 steps at lr 0.0015, 20 s, 50 % at step 2500) |" in text


@pytest.fixture(scope="module")
def domains():
    yield from imported("looped_domains.py")


def test_loops_by_domain_keeps_domains_and_settings_apart(domains):
    samples = pd.DataFrame(
        {
            "domain": ["arithmetic", "arithmetic", "planning", "planning"],
            "setting_id": ["token-loops8-kl0.0005"] * 4,
            "correct": [True, False, True, True],
        }
    )
    steps = pd.DataFrame(
        {
            "domain": ["arithmetic"] * 3 + ["planning"] * 2,
            "setting_id": ["token-loops8-kl0.0005"] * 5,
            "loops": [2, 2, 5, 8, 6],
        }
    )
    table = domains.by_domain(samples, steps).set_index("domain")
    assert table.loc["arithmetic", ["examples", "accuracy", "tokens", "mean", "max"]].tolist() == [2, 0.5, 3, 3.0, 5]
    assert table.loc["planning", ["examples", "accuracy", "tokens", "mean", "max"]].tolist() == [2, 1.0, 2, 7.0, 8]


def test_loops_by_domain_needs_runs(domains, tmp_path):
    with pytest.raises(InputError, match="no run directories"):
        domains.load([tmp_path])  # not an exit directory at all
    (tmp_path / "runs" / "half-written").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        domains.main([str(tmp_path), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and not (tmp_path / "out").exists()
