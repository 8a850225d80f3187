"""`latentcot analyze DIR`: the report of a real sweep, any subset of a run, bad directories."""

from __future__ import annotations

import pytest

from test_cli import cli

pytestmark = pytest.mark.slow


def test_analyze_a_measured_sweep(tmp_path, saved_model, capsys):
    run = tmp_path / "run"
    assert (
        cli(
            "sweep",
            "--model",
            saved_model,
            "--task",
            "addition:n=2,digits=1",
            "--limit",
            "6",
            "--latent",
            "soft",
            "--thresholds",
            "3,3.5",
            "--max-new-tokens",
            "10",
            "--measure",
            "counterfactual",
            "--out",
            run,
        )
        == 0
    )
    capsys.readouterr()
    assert cli("analyze", run) == 0
    out = capsys.readouterr().out
    assert f"report: {run / 'report' / 'report.html'}" in out
    assert "entropy-3nats-soft-lt1" in out and "token" in out  # the headline table
    html = (run / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5
    assert (run / "report" / "summary.md").is_file()


def test_analyze_a_token_only_run_says_what_it_skipped(tmp_path, saved_model, capsys):
    run = tmp_path / "run"
    assert (
        cli(
            "run",
            "--model",
            saved_model,
            "--task",
            "addition:n=2,digits=1",
            "--limit",
            "3",
            "--max-new-tokens",
            "6",
            "--out",
            run,
        )
        == 0
    )
    capsys.readouterr()
    report = tmp_path / "elsewhere"
    assert cli("analyze", run, "--out", report) == 0
    out = capsys.readouterr().out
    assert "skipped:" in out and (report / "report.html").is_file() and not (run / "report").exists()


def test_analyze_bad_directory_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "samples.jsonl").write_text("")
    for bad, message in [(tmp_path / "missing", "no samples.jsonl"), (tmp_path / "empty", "no records")]:
        capsys.readouterr()
        assert cli("analyze", bad) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("latentcot: error:") and "\n" not in err and message in err, err
        assert not (bad / "report").exists()
