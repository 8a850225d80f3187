"""Loops per token by domain: put the adaptive-exit runs of looped models on different tasks side by side.

    python benchmarks/looped_exit.py --model models/add-loop --task addition:... --out runs/exit-add
    python benchmarks/looped_exit.py --model models/pq-loop --task prosqa:... --out runs/exit-pq
    python benchmarks/looped_domains.py runs/exit-add runs/exit-pq --out runs/exit-domains

Reads every run directory under each argument's runs/ (the settings of looped_exit.py; a setting's id,
e.g. ``token-loops8-kl0.0005``, is the same for every model decoded with the same options) and
compares the domains of their tasks with ``analysis.loops``.

Writes to --out:
  loops_by_domain.csv  per (domain, setting_id): examples, accuracy, tokens, mean / median / max loops
  loops_by_domain.png  share of tokens by loops used, one panel per setting, one colour per domain
  results.md           the table
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from latentcot.analysis import load_run
from latentcot.analysis.loops import loops_figure, loops_per_token, loops_summary
from latentcot.analysis.render import markdown_table
from latentcot.errors import InputError


def load(exit_dirs: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Samples and steps of every setting run under each exit directory."""
    samples, steps = [], []
    for root in exit_dirs:
        folder = root / "runs"
        runs = sorted(p for p in folder.iterdir() if (p / "manifest.json").is_file()) if folder.is_dir() else []
        if not runs:
            raise InputError(
                f"no run directories under {folder} (run benchmarks/looped_exit.py first)", where=str(root)
            )
        for path in runs:
            run = load_run(path)
            samples.append(run.samples)
            steps.append(run.steps)
    return pd.concat(samples, ignore_index=True), pd.concat(steps, ignore_index=True)


def by_domain(samples: pd.DataFrame, steps: pd.DataFrame) -> pd.DataFrame:
    """Accuracy and loops per token for every (domain, setting_id)."""
    accuracy = (
        samples.groupby(["domain", "setting_id"])
        .agg(examples=("correct", "size"), accuracy=("correct", "mean"))
        .reset_index()
    )
    return accuracy.merge(loops_summary(steps), on=["domain", "setting_id"], how="left")


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("exit_dirs", type=Path, nargs="+", help="--out directories of benchmarks/looped_exit.py")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        samples, steps = load(args.exit_dirs)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    table = by_domain(samples, steps)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "loops_by_domain.csv", index=False)
    exits = steps[steps["setting_id"].str.contains("-(?:kl|entropy|argmax)", regex=True)]
    loops_figure(loops_per_token(exits)).savefig(args.out / "loops_by_domain.png", dpi=120)
    text = markdown_table(table.round(3))
    (args.out / "results.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    return table


if __name__ == "__main__":
    main()
