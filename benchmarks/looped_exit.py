"""Adaptive loop exit on a looped model: accuracy and loops per token, fixed loop counts vs exit rules.

    python benchmarks/looped_exit.py --model models/add-loop --task addition:n=4,digits=2,reverse=1 --out runs/exit
    python benchmarks/looped_exit.py ... --loops 1,2,4,8 --exit kl:1e-2 --exit kl:5e-4 --max-loops 8 --limit 500

Decodes the task's test split greedily with ``latentcot run`` once per setting (one run directory
per setting under --out/runs/, resumed when rerun): every fixed loop count of --loops, then every
--exit rule with at most --max-loops iterations. A looped model is only expected to exit well if
it was trained to be read out after any number of iterations (``random=1`` in its --arch).

Writes to --out:
  settings.csv       per setting: accuracy (Wilson 95 % CI), mean loops per generated token and per
                     answer token, tokens
  loops_by_group.csv per (setting, group): examples, accuracy, mean loops per token — the group is
                     the total carried over the digit columns for addition tasks (a harder sum carries
                     more; with two operands it is the number of carries), else "all"
  loops_by_role.csv  per (setting, role): mean loops and entropy of the tokens before the answer, of
                     each answer character (answer[0], answer[1], …; with the share that matches the
                     gold answer) and of the end of the sequence
  results.md         those tables
  exit.png           accuracy vs mean loops per token; loops distribution per token role for each exit rule
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from latentcot.analysis import load_run
from latentcot.analysis.render import markdown_table
from latentcot.analysis.stats import wilson_interval
from latentcot.zoo.data import ANSWER_PREFIX


def run_setting(args, name: str, options: list[str]) -> Path:
    """One ``latentcot run`` per setting; a finished one is reused, an interrupted one resumed."""
    out = args.out / "runs" / name
    command = [
        sys.executable,
        "-m",
        "latentcot",
        "run",
        "--model",
        str(args.model),
        "--task",
        args.task,
        "--split",
        "test",
        "--limit",
        str(args.limit),
        "--batch-size",
        str(args.batch_size),
        "--out",
        str(out),
        *options,
    ]
    if (out / "manifest.json").is_file():
        command.append("--resume")
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return out


def roles(token_texts: list[str]) -> list[str]:
    """Role of each generated token: "before answer", "answer[i]" (the token starting at the i-th
    character of the answer, after the last answer prefix) or "end" (a token that adds no text, e.g.
    EOS). A token holding the space and the first digit counts as answer[0]."""
    text = "".join(token_texts)
    where = text.rfind(ANSWER_PREFIX)
    body = text[where + len(ANSWER_PREFIX) :] if where >= 0 else ""
    answer_start = len(text) - len(body.lstrip()) if where >= 0 else len(text) + 1
    out, start = [], 0
    for piece in token_texts:
        end = start + len(piece)
        if not piece:
            out.append("end")
        elif end <= answer_start:
            out.append("before answer")
        else:
            out.append(f"answer[{max(0, start - answer_start)}]")
        start = end
    return out


def _offset(role: str) -> int | None:
    """i of an "answer[i]" role, None for the others."""
    return int(role[len("answer[") : -1]) if role.startswith("answer[") else None


def token_correct(role: str, text: str, answer: str) -> float:
    """1.0 / 0.0: an answer token matches the gold answer at its offset; NaN for other tokens."""
    offset, piece = _offset(role), text.strip()
    return float("nan") if offset is None else float(piece == answer[offset : offset + len(piece)])


def past_answer(role: str, answer: str) -> str:
    """Tokens written after as many characters as the gold answer has become one role, "past answer"."""
    offset = _offset(role)
    return "past answer" if offset is not None and offset >= len(answer) else role


def collect(args, settings: dict[str, list[str]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Samples and steps of every setting, with ``group`` per sample and ``role`` per step."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    reverse = "reverse=1" in args.task
    samples, steps = [], []
    for name, options in settings.items():
        run = load_run(run_setting(args, name, options))
        s, t = run.samples.assign(setting=name), run.steps.assign(setting=name)
        s["group"] = [_group(q, reverse) for q in s["prompt"]]
        t = t.merge(s[["example_id", "group", "answer"]], on="example_id")
        t["text"] = [tokenizer.decode([int(i)], skip_special_tokens=True) for i in t["token_id"]]
        t["role"] = [r for _, g in t.groupby("example_id", sort=False) for r in roles(list(g["text"]))]
        t["token_correct"] = [token_correct(*row) for row in t[["role", "text", "answer"]].itertuples(index=False)]
        t["role"] = [past_answer(*row) for row in t[["role", "answer"]].itertuples(index=False)]
        samples.append(s)
        steps.append(t)
    return pd.concat(samples, ignore_index=True), pd.concat(steps, ignore_index=True)


def _group(prompt: str, reverse: bool) -> str:
    question = prompt.strip().splitlines()[-1] if prompt.strip() else prompt
    carried = _carried(question, reverse)
    return "all" if carried is None else f"carried {carried}"


def _carried(question: str, reverse: bool) -> int | None:
    """Sum of the carries out of every digit column of an addition question (None: not one)."""
    operands = re.findall(r"\d+", question)
    if "+" not in question or len(operands) < 2 or len({len(x) for x in operands}) != 1:
        return None
    total, carry = 0, 0
    for column in zip(*(x if reverse else x[::-1] for x in operands)):  # least-significant column first
        carry = (sum(int(d) for d in column) + carry) // 10
        total += carry
    return total


def tables(samples: pd.DataFrame, steps: pd.DataFrame, order: list[str]) -> dict[str, pd.DataFrame]:
    def accuracy(frame: pd.DataFrame) -> pd.Series:
        n, k = len(frame), int(frame["correct"].sum())
        lo, hi = wilson_interval(k, n)
        return pd.Series({"examples": n, "accuracy": k / n, "lo": lo, "hi": hi})

    answer = steps[steps["role"].str.startswith("answer")]
    settings = samples.groupby("setting", sort=False).apply(accuracy, include_groups=False)
    settings["loops_per_token"] = steps.groupby("setting")["loops"].mean()
    settings["loops_per_answer_token"] = answer.groupby("setting")["loops"].mean()
    settings["tokens"] = steps.groupby("setting").size()
    by_group = samples.groupby(["setting", "group"], sort=False).apply(accuracy, include_groups=False)
    by_group["loops_per_token"] = steps.groupby(["setting", "group"])["loops"].mean()
    by_role = steps.groupby(["setting", "role"]).agg(
        tokens=("loops", "size"),
        loops_per_token=("loops", "mean"),
        entropy=("entropy", "mean"),
        token_accuracy=("token_correct", "mean"),
    )
    rank = {name: i for i, name in enumerate(order)}
    return {
        name: frame.reset_index().sort_values("setting", key=lambda c: c.map(rank), kind="stable")
        for name, frame in (("settings", settings), ("loops_by_group", by_group), ("loops_by_role", by_role))
    }


def plot(out: dict[str, pd.DataFrame], steps: pd.DataFrame, exits: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 1 + len(exits), figsize=(4.4 * (1 + len(exits)), 3.6), squeeze=False)
    ax = axes[0][0]
    table = out["settings"]
    for is_exit, marker, label in ((False, "o-", "fixed loops"), (True, "s", "adaptive exit")):
        part = table[table["setting"].isin(exits) == is_exit]
        ax.errorbar(
            part["loops_per_token"],
            part["accuracy"],
            yerr=[part["accuracy"] - part["lo"], part["hi"] - part["accuracy"]],
            fmt=marker,
            capsize=3,
            label=label,
        )
        for row in part.itertuples():
            ax.annotate(
                row.setting, (row.loops_per_token, row.accuracy), fontsize=6, xytext=(3, -8), textcoords="offset points"
            )
    ax.set_xlabel("mean loops per generated token")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(-0.03, 1.03)
    ax.legend(fontsize=7)
    for ax, name in zip(axes[0][1:], exits):  # by token role: where the exit spends its loops
        part = steps[steps["setting"] == name]
        names = sorted(part["role"].unique())
        top = int(part["loops"].max())
        width = 0.8 / max(len(names), 1)
        for i, role in enumerate(names):
            loops = part.loc[part["role"] == role, "loops"].astype(int)
            share = loops.value_counts(normalize=True).reindex(range(1, top + 1), fill_value=0)
            ax.bar(
                np.arange(1, top + 1) + (i - (len(names) - 1) / 2) * width,
                share,
                width,
                label=f"{role} (mean {loops.mean():.2f})",
            )
        ax.set_xlabel("loops used")
        ax.set_ylabel("share of tokens")
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(out: dict[str, pd.DataFrame]) -> str:
    parts = []
    for name, frame in out.items():
        parts += [f"## {name}", "", markdown_table(frame.round(3)), ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> dict[str, pd.DataFrame]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a looped model directory")
    parser.add_argument("--task", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--loops", default="1,2,3,4,5,6,7,8", help="fixed loop counts, comma-separated")
    parser.add_argument(
        "--exit",
        action="append",
        dest="exits",
        help="exit rule as for `latentcot run --exit` (repeat); default kl:1e-2, kl:1e-3, kl:5e-4, argmax:2",
    )
    parser.add_argument("--max-loops", type=int, default=8, help="most iterations an exit rule may use")
    parser.add_argument("--limit", type=int, default=500, help="test examples")
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args(argv)
    exits = args.exits or ["kl:1e-2", "kl:1e-3", "kl:5e-4", "argmax:2"]
    settings = {f"loops{n}": ["--loops", n] for n in args.loops.split(",")}
    settings |= {f"{rule}": ["--loops", str(args.max_loops), "--exit", rule] for rule in exits}
    args.out.mkdir(parents=True, exist_ok=True)
    samples, steps = collect(args, settings)
    out = tables(samples, steps, list(settings))
    for name, frame in out.items():
        frame.to_csv(args.out / f"{name}.csv", index=False)
    (args.out / "results.md").write_text(markdown(out), encoding="utf-8")
    plot(out, steps, exits, args.out / "exit.png")
    print(markdown(out))
    return out


if __name__ == "__main__":
    main()
