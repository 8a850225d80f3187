"""`latentcot sweep`: threshold grids, baselines, per-domain maps, determinism, bad input."""

from __future__ import annotations

import json
import math

import pytest

from latentcot.analysis import load_run
from latentcot.config import DecodeConfig, GateConfig, LatentConfig
from latentcot.errors import InputError
from latentcot.grid import parse_thresholds, read_threshold_map, sweep_settings
from test_cli import cli, records


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("0,0.5,1", [0.0, 0.5, 1.0]),
        ("1, 0.5,0.5", [0.5, 1.0]),  # sorted, duplicates dropped
        ("0:1:0.25", [0.0, 0.25, 0.5, 0.75, 1.0]),  # stop included
        ("0.5:0.5:1", [0.5]),
    ],
)
def test_threshold_specs(spec, expected):
    assert parse_thresholds(spec) == expected


def test_threshold_range_has_no_float_drift():
    values = parse_thresholds("0:3:0.1")
    assert len(values) == 31 and values[3] == 0.3 and values[-1] == 3.0
    assert values == [round(i / 10, 10) for i in range(31)]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("0:3", "expected start:stop:step"),
        ("0:3:0", "step must be > 0"),
        ("3:0:1", "stop is below start"),
        ("0:1:1e-6", "at most 1000"),
        ("0,-1", "threshold must be a number >= 0"),
        ("0,nan", "threshold must be a number >= 0"),
        ("0,inf", "threshold must be a number >= 0"),
        ("a,b", "not a number"),
        (",", "no thresholds"),
    ],
)
def test_bad_threshold_specs(spec, message):
    with pytest.raises(InputError, match=message):
        parse_thresholds(spec)


def test_k_thresholds_give_k_plus_2_settings_and_unique_ids():
    decode = DecodeConfig(max_new_tokens=8)
    one = sweep_settings([0.5, 1.0, 2.0], [LatentConfig("soft")], decode)
    assert [s.gate.kind for s in one] == ["token", "latent", "entropy", "entropy", "entropy"]
    assert [s.gate.threshold for s in one[2:]] == [0.5, 1.0, 2.0]
    two = sweep_settings(
        [0.5, 1.0],
        [LatentConfig("soft"), LatentConfig("hidden"), LatentConfig("soft")],
        decode,
        threshold_map={"logic": 0.2, "*": 1.0},
    )
    assert len(two) == 1 + 2 * (1 + 2 + 1)
    assert len({s.id for s in two}) == len(two)
    with pytest.raises(InputError, match="needs thresholds"):
        sweep_settings([], [LatentConfig()], decode)


def test_threshold_map_resolves_per_domain_under_one_id():
    gate = GateConfig("entropy", threshold_map={"logic": 0.2, "*": 1.5})
    assert gate.for_domain("logic").threshold == 0.2 and gate.for_domain("planning").threshold == 1.5
    ids = {s.id for s in sweep_settings([], [LatentConfig()], DecodeConfig(), threshold_map=dict(gate.threshold_map))}
    assert any(i.startswith("entropy-map") for i in ids)
    with pytest.raises(InputError, match="no entry for domain 'logic'"):
        GateConfig("entropy", threshold_map={"arithmetic": 1.0}).for_domain("logic")
    with pytest.raises(InputError, match="must be a number >= 0"):
        GateConfig("entropy", threshold_map={"arithmetic": -1.0})


def test_threshold_map_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "map.json"
    bad.write_text('{\n  "logic": 0.5,\n  "arithmetic": \n}')
    with pytest.raises(InputError) as info:
        read_threshold_map(bad)
    assert f"{bad}:4" in str(info.value)
    bad.write_text('{"logic": "high"}')
    with pytest.raises(InputError, match="must be a number >= 0"):
        read_threshold_map(bad)
    with pytest.raises(InputError, match="does not exist"):
        read_threshold_map(tmp_path / "missing.json")


@pytest.fixture(scope="module")
def syllogisms(tmp_path_factory):
    """A generic-format dataset of another domain (short prompts: the tiny model's context is 512)."""
    path = tmp_path_factory.mktemp("data") / "syllogisms.jsonl"
    rows = [
        {"question": f"Every {a} is a {b}. Tom is a {a}. Is Tom a {b}?", "answer": "True", "domain": "logic"}
        for a, b in [("cat", "pet"), ("fox", "dog"), ("elm", "tree")]
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def sweep_args(syllogisms):
    return [
        "--task",
        "addition:n=2,digits=1",
        "--task",
        syllogisms,
        "--limit",
        "3",
        "--latent",
        "soft",
        "--max-new-tokens",
        "10",
        "--batch-size",
        "2",
    ]


@pytest.fixture(scope="module")
def swept(tmp_path_factory, saved_model, sweep_args):
    out = tmp_path_factory.mktemp("sweep") / "run"
    assert cli("sweep", "--model", saved_model, *sweep_args, "--thresholds", "2.5:3.5:0.5", "--out", out) == 0
    return out


def test_sweep_records_every_example_setting_pair_once(swept):
    rows = records(swept)
    keys = [(r["task_spec"], r["setting_id"], r["example_id"]) for r in rows]
    assert len(keys) == len(set(keys)) == 2 * 3 * (3 + 2)
    settings = {r["setting_id"]: r["setting"] for r in rows}
    assert sorted(settings) == sorted(
        ["token", "latent-soft-lt1", "entropy-2.5nats-soft-lt1", "entropy-3nats-soft-lt1", "entropy-3.5nats-soft-lt1"]
    )
    by_setting = {sid: [r for r in rows if r["setting_id"] == sid] for sid in settings}
    assert all(r["n_latent"] == 0 for r in by_setting["token"])
    assert all(r["n_latent"] == r["n_steps"] > 0 for r in by_setting["latent-soft-lt1"])
    # a higher threshold never makes a row take more latent steps at its first step
    first_latent = {sid: sum(r["steps"]["mode"][0] == "latent" for r in rs) for sid, rs in by_setting.items()}
    assert (
        first_latent["entropy-2.5nats-soft-lt1"]
        >= first_latent["entropy-3nats-soft-lt1"]
        >= first_latent["entropy-3.5nats-soft-lt1"]
    )
    manifest = json.loads((swept / "manifest.json").read_text())
    assert len(manifest["config"]["settings"]) == 5 and manifest["config"]["measure"] == []


def test_sweep_frames_have_what_analysis_needs(swept):
    run = load_run(swept)
    assert len(run.samples) == 30 and len(run.steps) == run.samples["n_steps"].sum()
    summary = run.samples.groupby(["domain", "setting_id"]).agg(
        accuracy=("correct", "mean"), latent=("latent_fraction", "mean")
    )
    assert set(summary.index.get_level_values("domain")) == {"arithmetic", "logic"}
    assert summary["latent"].between(0, 1).all()
    assert {"gate", "threshold", "unit", "latent"} <= set(run.samples.columns)
    assert run.steps["entropy"].dtype == float and set(run.steps["mode"]) <= {"token", "latent", "marker"}


def test_same_seed_gives_byte_identical_samples(swept, saved_model, sweep_args, tmp_path):
    again = tmp_path / "again"
    assert cli("sweep", "--model", saved_model, *sweep_args, "--thresholds", "2.5,3,3.5", "--out", again) == 0
    assert (again / "samples.jsonl").read_bytes() == (swept / "samples.jsonl").read_bytes()


def test_per_domain_threshold_map(tmp_path, saved_model, sweep_args):
    taus = tmp_path / "taus.json"
    taus.write_text(json.dumps({"arithmetic": 0.0, "*": 100}))
    out = tmp_path / "run"
    assert cli("sweep", "--model", saved_model, *sweep_args, "--threshold-map", taus, "--out", out) == 0
    rows = [r for r in records(out) if r["setting"]["threshold_map"]]
    assert len({r["setting_id"] for r in rows}) == 1 and len(rows) == 6
    for r in rows:
        expected = 0.0 if r["domain"] == "arithmetic" else 100.0
        assert r["setting"]["threshold"] == expected
        assert r["n_latent"] == (r["n_steps"] if expected == 0 else 0)  # τ = 0: always latent; 100: never


def test_sweep_bad_input_is_one_line_exit_2(tmp_path, saved_model, sweep_args, capsys):
    no_default = tmp_path / "taus.json"
    no_default.write_text(json.dumps({"arithmetic": 1.0}))
    cases = {
        "bad range": (["--thresholds", "0:1"], "expected start:stop:step"),
        "negative": (["--thresholds", "0,-1"], "threshold must be a number >= 0"),
        "nan": (["--thresholds", "nan"], "threshold must be a number >= 0"),
        "no thresholds": ([], "needs thresholds"),
        "unknown latent": (["--thresholds", "1", "--latent", "soft,mean"], "unknown latent mode 'mean'"),
        "map without a domain": (["--threshold-map", no_default], "no entry for domain 'logic'"),
        "missing map": (["--threshold-map", tmp_path / "nope.json"], "does not exist"),
        "gate is not a sweep option": (["--thresholds", "1", "--gate", "token"], "No such option"),
        "unknown task": (["--thresholds", "1", "--task", "sudoku"], "unknown task 'sudoku'; valid tasks: addition"),
        "unknown built-in model": (["--thresholds", "1", "--model", "builtin:nope"], "unknown built-in model 'nope'"),
        "unknown measurement": (["--thresholds", "1", "--measure", "vibes"], "unknown measurement 'vibes'"),
    }
    for name, (extra, message) in cases.items():
        out = tmp_path / f"out-{name}"
        capsys.readouterr()
        assert cli("sweep", "--model", saved_model, *sweep_args, *extra, "--out", out) == 2, name
        err = capsys.readouterr().err.strip()
        assert err.startswith("latentcot: error:") and "\n" not in err and message in err, (name, err)
        assert not out.exists(), name


def test_threshold_parse_matches_arithmetic_progression():
    # the grid is exactly start + i * step, never accumulated
    for start, stop, step in [(0.0, 2.0, 0.25), (0.1, 0.9, 0.2), (1.0, 4.0, 1.5)]:
        values = parse_thresholds(f"{start}:{stop}:{step}")
        assert len(values) == math.floor((stop - start) / step + 1e-9) + 1
        assert all(math.isclose(v, start + i * step) for i, v in enumerate(values))


def _by_key(rows):
    return {(r["task_spec"], r["setting_id"], r["example_id"]): r for r in rows}


def _same_records(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        floats = ("entropy", "p_token", "p_max")
        assert {k: v for k, v in x.items() if k != "steps"} == {k: v for k, v in y.items() if k != "steps"}, key
        assert {k: v for k, v in x["steps"].items() if k not in floats} == {
            k: v for k, v in y["steps"].items() if k not in floats
        }, key
        # fp32 sums differ in the last bit between batch shapes, and feeding latents back amplifies that
        # ~10x per latent step in a random model (tests/conftest.py); float64 equality is in test_tree.py
        for name in floats:
            assert x["steps"][name] == pytest.approx(y["steps"][name], abs=1e-3), (key, name)


def test_shared_and_unshared_sweeps_give_the_same_records(swept, saved_model, sweep_args, tmp_path, capsys):
    capsys.readouterr()
    alone = tmp_path / "alone"
    args = ["--model", saved_model, *sweep_args, "--thresholds", "2.5:3.5:0.5"]
    assert cli("sweep", *args, "--no-share", "--out", alone) == 0
    _same_records(_by_key(records(swept)), _by_key(records(alone)))
    shared_cost = json.loads((swept / "manifest.json").read_text())["decode_cost"]
    alone_cost = json.loads((alone / "manifest.json").read_text())["decode_cost"]
    assert shared_cost["shared"] and not alone_cost["shared"]
    # the same work measured two ways: separate rows are the records' steps, whatever decoded them
    steps = sum(r["n_steps"] for r in records(swept))
    assert shared_cost["separate_rows"] == alone_cost["separate_rows"] == alone_cost["forward_rows"] == steps
    assert shared_cost["forward_rows"] < steps and shared_cost["trajectories"] < shared_cost["records"] == 30
    assert "decode cost:" in capsys.readouterr().out
    # a tree with room for no fork at all spills every disagreeing arm and still writes the same records
    tight = tmp_path / "tight"
    assert cli("sweep", *args, "--max-rows", "1", "--out", tight) == 0
    _same_records(_by_key(records(swept)), _by_key(records(tight)))
