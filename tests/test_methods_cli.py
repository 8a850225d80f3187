"""Named methods through the real CLI: `latentcot methods`, a sweep of every method on a saved tiny
model, `--thresholds` expansion, paired examples and seeds, the record contract, bad input, analyze."""

from __future__ import annotations

import csv
import json

import pytest
from transformers import AutoTokenizer

from latentcot.methods import METHODS, REQUIRED, expand_thresholds
from latentcot.types import LATENT_TEXT
from test_cli import REQUIRED as RECORD_FIELDS
from test_cli import STEP_FIELDS, cli, records

THRESHOLDS = (0.3, 0.9)  # valid for both the entropy gate (nats) and think-router (p_max)
METHOD_SPECS = {  # --method spec -> the method's resolved parameters that differ from its defaults
    "token": {},
    "coconut:k=2": {"k": 2},
    "entropy": {},  # threshold from --thresholds
    "soft-thinking:cold_stop_steps=2": {"cold_stop_steps": 2},
    "swir:window=2": {"window": 2},
    "think-router": {},  # threshold from --thresholds
    "moi": {},
    "random-soft:cold_stop_steps=2": {"cold_stop_steps": 2},
    "multiplex:cold_stop_steps=2": {"cold_stop_steps": 2},
}
EMITTING = {"moi", "swir"}
COMMON = [
    "--task",
    "addition:n=2,digits=1",
    "--limit",
    "3",
    "--max-new-tokens",
    "10",
    "--temperature",
    "1.0",  # sampled: the row seeds decide the tokens, so pairing by seed is visible
    "--seed",
    "7",
]


@pytest.fixture(scope="module")
def methods_run(tmp_path_factory, saved_model):
    out = tmp_path_factory.mktemp("methods") / "run"
    specs = [arg for spec in METHOD_SPECS for arg in ("--method", spec)]
    thresholds = ",".join(map(str, THRESHOLDS))
    assert cli("sweep", "--model", saved_model, *COMMON, *specs, "--thresholds", thresholds, "--out", out) == 0
    return out


def by_setting(rows):
    grouped = {}
    for r in rows:
        grouped.setdefault(r["setting_id"], []).append(r)
    return grouped


def test_methods_command_lists_every_method_with_its_defaults(capsys):
    assert cli("methods") == 0
    out = capsys.readouterr().out
    blocks, current = {}, None
    for line in out.splitlines():
        if not line.startswith(" "):
            current = line.split(":", 1)[0]
            blocks[current] = {"summary": line.split(":", 1)[1].strip(), "params": {}, "lines": []}
        else:
            blocks[current]["lines"].append(line.strip())
            head = line.strip().split(":", 1)[0]
            if head not in ("paper",) and not head.startswith("sweep"):
                name, _, default = head.partition(" ")
                blocks[current]["params"][name] = default
    assert list(blocks) == [m.name for m in METHODS]
    for m in METHODS:
        block = blocks[m.name]
        assert block["summary"] == m.summary
        if m.paper:
            assert f"paper: {m.paper}" in block["lines"]
        expected = {p.name: "(required)" if p.default is REQUIRED else f"= {p.default}" for p in m.params}
        assert block["params"] == expected, m.name
        assert any(line.endswith(f"varies {m.threshold}") for line in block["lines"]) == (m.threshold is not None)
    # the published defaults, as the notes quote them
    assert (
        blocks["soft-thinking"]["params"]["top_k"] == "= 10" and blocks["soft-thinking"]["params"]["min_p"] == "= 0.001"
    )
    assert blocks["soft-thinking"]["params"]["cold_stop_steps"] == "= 256"
    assert blocks["swir"]["params"]["window"] == "= 512" and blocks["moi"]["params"]["top_k"] == "= 20"
    assert blocks["coconut"]["params"]["k"] == "(required)"


@pytest.mark.slow
def test_every_method_records_its_resolved_parameters(methods_run):
    rows = records(methods_run)
    settings = by_setting(rows)
    names = {name.split(":")[0] for name in METHOD_SPECS}
    assert {r["setting"]["method"] for r in rows} == names
    # one setting per method, but one per threshold for the methods that have one
    per_method = {}
    for sid, rs in settings.items():
        per_method.setdefault(rs[0]["setting"]["method"], []).append(sid)
    for m in METHODS:
        assert len(per_method[m.name]) == (len(THRESHOLDS) if m.threshold else 1), m.name
    assert len(settings) == len(METHODS) + 2
    for sid, rs in settings.items():
        setting = rs[0]["setting"]
        assert all(r["setting"] == setting for r in rs)
        spec = next(s for s in METHOD_SPECS if s.split(":")[0] == setting["method"])
        params = setting["method_params"]
        taus = [params["threshold"]] if "threshold" in params else []
        (choice,) = expand_thresholds(spec, taus)  # what the spec resolves to at this setting's threshold
        method = choice.method
        assert set(params) == {p.name for p in method.params}, sid
        expected = {**method.defaults(), **METHOD_SPECS[spec]}
        if method.threshold:
            assert params[method.threshold] in THRESHOLDS
            expected[method.threshold] = params[method.threshold]
        assert params == expected, sid
        # the setting is what those parameters resolve to
        gate, latent = choice.configs()
        assert setting["gate"] == gate.kind and setting["latent"] == latent.kind, sid
        assert setting["threshold"] == gate.threshold and setting["latent_top_k"] == latent.top_k, sid
        assert setting["temperature"] == 1.0 and setting["max_new_tokens"] == 10


@pytest.mark.slow
def test_thresholds_expand_entropy_and_think_router(methods_run):
    settings = by_setting(records(methods_run))
    for method in ("entropy", "think-router"):
        taus = sorted(rs[0]["setting"]["threshold"] for rs in settings.values() if rs[0]["setting"]["method"] == method)
        assert taus == list(THRESHOLDS), method
        assert sorted(
            rs[0]["setting"]["method_params"]["threshold"]
            for rs in settings.values()
            if rs[0]["setting"]["method"] == method
        ) == list(THRESHOLDS)
    router = [rs for rs in settings.values() if rs[0]["setting"]["method"] == "think-router"]
    for rs in router:  # latent exactly where p_max >= threshold
        tau = rs[0]["setting"]["threshold"]
        for r in rs:
            assert [m == "latent" for m in r["steps"]["mode"]] == [p >= tau for p in r["steps"]["p_max"]]


@pytest.mark.slow
def test_the_comparison_is_paired_examples_and_seeds(methods_run, saved_model, tmp_path):
    rows = records(methods_run)
    settings = by_setting(rows)
    ids = {sid: sorted(r["example_id"] for r in rs) for sid, rs in settings.items()}
    assert len({tuple(v) for v in ids.values()}) == 1 and len(ids["token-T1p1k0"]) == 3
    manifest = json.loads((methods_run / "manifest.json").read_text())
    assert manifest["seed"] == 7
    token = {r["example_id"]: r for r in settings["token-T1p1k0"]}
    drew = set()
    for r in rows:
        base = token[r["example_id"]]
        # the same prompt: the first distribution is the same for every method
        assert r["prompt"] == base["prompt"]
        assert r["steps"]["entropy"][0] == pytest.approx(base["steps"]["entropy"][0], rel=1e-5)
        # the same row seed: where the first step samples (a token, or a latent that emits its sample),
        # it draws the token the token method drew
        emitted = r["steps"].get("emitted", [False])[0]
        if r["steps"]["mode"][0] == "token" or emitted:
            assert r["steps"]["token_id"][0] == base["steps"]["token_id"][0], r["setting_id"]
            drew.add(r["setting"]["method"])
    # the emitting methods sample at step 0, and so does think-router (this model's p_max starts below 0.3)
    assert {"token", "moi", "swir", "think-router"} <= drew
    # a noisy method decodes an example the same alone, in another batch, in another run
    sid = next(s for s, rs in settings.items() if rs[0]["setting"]["method"] == "random-soft")
    alone = tmp_path / "alone"
    args = ["--method", "random-soft:cold_stop_steps=2", "--batch-size", "1", "--out", alone]
    assert cli("run", "--model", saved_model, *COMMON, *args) == 0
    together = {r["example_id"]: r for r in settings[sid]}
    for r in records(alone):
        other = together[r["example_id"]]
        assert r["completion"] == other["completion"]
        assert r["steps"]["mode"] == other["steps"]["mode"] and r["steps"]["token_id"] == other["steps"]["token_id"]
        # another batch size rounds differently in fp32 (a tiny random model amplifies it over latent steps)
        assert r["steps"]["entropy"] == pytest.approx(other["steps"]["entropy"], rel=1e-3)
    assert any(r["n_latent"] > 0 for r in settings[sid])


@pytest.mark.slow
def test_record_contract_holds_for_every_method(methods_run, saved_model):
    tokenizer = AutoTokenizer.from_pretrained(saved_model)
    rows = records(methods_run)
    assert len(rows) == 3 * (len(METHODS) + 2)
    for r in rows:
        method = r["setting"]["method"]
        assert RECORD_FIELDS <= r.keys() and STEP_FIELDS <= r["steps"].keys(), method
        assert all(len(v) == r["n_steps"] for v in r["steps"].values()), method
        assert 1 <= r["n_steps"] <= 10 and r["task"] == "addition" and r["domain"] == "arithmetic"
        modes = r["steps"]["mode"]
        assert r["n_latent"] == modes.count("latent")
        # COCONUT inserts the model's own thought markers (this tokenizer has <bot>/<eot>: markers=auto);
        # SwiReasoning blends them into its switch inputs, so no step of its is a marker
        assert set(modes) <= ({"token", "latent", "marker"} if method == "coconut" else {"token", "latent"})
        with_markers = method in ("coconut", "swir")
        assert r["setting"]["markers"] == (["<bot>", "<eot>"] if with_markers else None), method
        assert isinstance(r["correct"], bool) and r["finish_reason"] in ("eos", "stop", "length")
        emitted = r["steps"].get("emitted")
        assert (emitted is not None) == (method in EMITTING), method
        if method in EMITTING:
            assert emitted == [m == "latent" for m in modes]  # every latent step emits its sampled token
            assert LATENT_TEXT not in r["completion"]
            ids = r["steps"]["token_id"][:-1] if r["finish_reason"] == "eos" else r["steps"]["token_id"]
            assert r["completion"] == tokenizer.decode(ids)
        else:
            assert r["completion"].count(LATENT_TEXT) == r["n_latent"]
        for mode, shown, p_token, p_max in zip(
            modes, emitted or [False] * len(modes), r["steps"]["p_token"], r["steps"]["p_max"]
        ):
            assert 0 <= p_token <= p_max + 1e-6 <= 1 + 1e-6
            if mode == "latent" and not shown:
                assert p_token == p_max  # a latent step stands for its argmax token
    by_method = {}
    for r in rows:
        by_method.setdefault(r["setting"]["method"], []).append(r)
    assert all(r["n_latent"] == 0 for r in by_method["token"])
    coconut = ["marker", "latent", "latent", "marker"]  # begin marker, k = 2 latents, end marker
    assert all(r["steps"]["mode"][:4] == coconut[: r["n_steps"]] for r in by_method["coconut"])
    assert all(
        r["completion"].startswith("<bot>⟨latent⟩⟨latent⟩<eot>"[: len(r["completion"])]) for r in by_method["coconut"]
    )
    assert all(r["n_latent"] == r["n_steps"] for r in by_method["moi"])
    assert all(r["steps"]["mode"][0] == "latent" for r in by_method["swir"])  # SwiReasoning starts latent
    manifest = json.loads((methods_run / "manifest.json").read_text())
    assert {"command", "config", "seed", "versions", "git_commit", "device", "started_at", "finished_at"} <= set(
        manifest
    )
    assert sorted(manifest["config"]["settings"]) == sorted({r["setting_id"] for r in rows})


@pytest.mark.slow
def test_analyze_compares_every_setting(methods_run, capsys):
    capsys.readouterr()
    assert cli("analyze", methods_run) == 0
    out = capsys.readouterr().out
    assert "method comparison" in out
    table = list(csv.DictReader((methods_run / "report" / "method_comparison.csv").open()))
    settings = by_setting(records(methods_run))
    assert sorted(row["setting_id"] for row in table) == sorted(settings)  # one row per setting
    for row in table:
        assert row["method"] == settings[row["setting_id"]][0]["setting"]["method"]
        assert row["domain"] == "arithmetic" and int(row["n"]) == 3
        assert row["baseline"] == "token-T1p1k0"
        if row["setting_id"] != "token-T1p1k0":
            assert int(row["n_paired"]) == 3
    summary = (methods_run / "report" / "summary.md").read_text()
    assert "Method comparison" in summary
    assert all(sid in summary for sid in settings)


def bad_method_inputs():
    """(command, extra arguments, a piece of the one-line message)."""
    return {
        "unknown method": ("sweep", ["--method", "nosuch"], "unknown method 'nosuch'"),
        "unknown method on run": ("run", ["--method", "nosuch"], "unknown method 'nosuch'"),
        "unknown key": ("sweep", ["--method", "swir:windw=3"], "unknown parameter 'windw' for method swir"),
        "negative window": ("run", ["--method", "swir:window=-1"], "window must be an integer >= 0"),
        "blend weight outside [0, 1]": ("sweep", ["--method", "swir:beta0=1.5"], "beta0 must be in [0, 1]"),
        "negative k": ("sweep", ["--method", "coconut:k=-1"], "needs k, an integer >= 0"),
        "p_max threshold above 1": ("run", ["--method", "think-router:threshold=1.5"], "in [0, 1]"),
        "swept p_max threshold above 1": ("sweep", ["--method", "think-router", "--thresholds", "0.5,2"], "in [0, 1]"),
        "nan threshold": ("run", ["--method", "think-router:threshold=nan"], "in [0, 1]"),
        "min_p above 1": ("sweep", ["--method", "soft-thinking:min_p=2"], "min_p must be in [0, 1]"),
        "not a number": ("sweep", ["--method", "moi:beta=lots"], "bad value 'lots' for beta"),
        "not an integer": ("run", ["--method", "swir:window=2.5"], "bad value '2.5' for window"),
        "coconut without k": ("sweep", ["--method", "coconut"], "method coconut needs k"),
        "entropy without threshold": ("run", ["--method", "entropy"], "method entropy needs threshold"),
        "no value": ("sweep", ["--method", "swir:window"], "expected key=value"),
        "key twice": ("sweep", ["--method", "swir:window=1,window=2"], "given twice"),
        "unknown merge": ("sweep", ["--method", "multiplex:merge=median"], "unknown multiplex merge 'median'"),
        "unknown direction": ("run", ["--method", "entropy:threshold=1,direction=sideways"], "unknown direction"),
        "unknown latent": ("run", ["--method", "coconut:k=1,latent=bogus"], "unknown latent mode 'bogus'"),
        "zero gumbel temperature": ("sweep", ["--method", "random-soft:gumbel_temperature=0"], "must be > 0"),
        "zero width": ("sweep", ["--method", "multiplex:width=0"], ">= 1"),
        "negative beta": ("sweep", ["--method", "moi:beta=-1"], "beta must be >= 0"),
        "negative cold stop": ("sweep", ["--method", "soft-thinking:cold_stop_steps=-3"], "cold_stop_steps"),
        "method and gate": ("run", ["--method", "swir", "--gate", "token"], "--method replaces --gate"),
        "method and latent": ("run", ["--method", "coconut:k=1", "--latent", "soft"], "--method replaces --latent"),
        "method and k": ("run", ["--method", "coconut:k=1", "--k", "3"], "--method replaces --k"),
        "threshold and thresholds": (
            "sweep",
            ["--method", "entropy:threshold=1", "--thresholds", "0.5"],
            "sets threshold and --thresholds sweeps it",
        ),
    }


def test_bad_method_input_is_one_line_exit_2_and_nothing_written(tmp_path, saved_model, capsys):
    for name, (command, extra, message) in bad_method_inputs().items():
        out = tmp_path / f"out-{name}"
        capsys.readouterr()
        assert cli(command, "--model", saved_model, *COMMON, *extra, "--out", out) == 2, name
        err = capsys.readouterr().err.strip()
        assert err.startswith("latentcot: error:") and "\n" not in err, (name, err)
        assert message in err, (name, err)
        assert "Traceback" not in err
        assert not out.exists(), name


@pytest.mark.parametrize(
    "command, option, value, field",
    [
        ("sweep", "--max-consecutive", "2", "max_consecutive"),
        ("sweep", "--max-latent", "1", "max_latent"),
        ("sweep", "--unit", "bits", "unit"),
        ("sweep", "--latent-temperature", "0.5", "latent_temperature"),
        ("run", "--unit", "bits", "unit"),
    ],
)
def test_a_method_never_silently_drops_an_entropy_option(tmp_path, saved_model, command, option, value, field):
    """Either refused (exit 2, nothing written, as run does for --max-consecutive) or applied to the records."""
    out = tmp_path / "run"
    method = ["--method", "entropy", "--thresholds", "1"] if command == "sweep" else ["--method", "entropy:threshold=1"]
    args = ["--task", "addition:n=2,digits=1", "--limit", "1", "--max-new-tokens", "2", *method, option, value]
    code = cli(command, "--model", saved_model, *args, "--out", out)
    if code == 2:
        assert not out.exists()
        return
    assert code == 0
    entropy = [r for r in records(out) if r["setting"]["method"] == "entropy"]
    assert entropy and all(str(r["setting"][field]) == value for r in entropy)
