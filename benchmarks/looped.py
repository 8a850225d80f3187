"""Looped vs plain depth: the k⊗L grid of "Reasoning with Latent Thoughts", trained by steps.

    python benchmarks/looped.py --out runs/looped-grid [--steps 3000] [--task T ...]  # e.g. --task phop
    python benchmarks/looped.py --quick --out /tmp/looped-quick      # a smoke run of a few minutes
    python benchmarks/looped.py --out DIR --cells 2x8,8x1 & python benchmarks/looped.py --out DIR --cells 1x8,2x4 …
                                                                     # split the grid across processes

A k⊗L model applies one block of k Llama layers L times (effective depth D = k·L). The grid:
base k⊗1 for k in {1, 2, 4, 8} (plain k-layer models) and looped 1⊗L, 2⊗L for L in {2, 4, 8}.
Every cell trains the same number of optimizer steps (not minutes: deeper loops are slower per
step, so a wall-clock budget would favour shallow models), without chain of thought (question →
answer, the "nocot" layout), then is scored greedily on the test split.

Writes to --out:
  results.csv       one row per (task, cell): k, L, depth, params, steps, seconds, accuracy and
                    answer_characters (per character position, the share of the test answers with
                    that position that get it right)
                    (seconds: wall-clock training time including the final validation check;
                    compare it only between cells trained on an otherwise idle machine)
  fits.csv          per (task, family) the least-squares fit accuracy ≈ α·ln D + β
  results.md        the accuracy table (each cell: accuracy, steps, seconds) and the fits
  accuracy_vs_depth.png
  learning_curves.png  validation accuracy against step, one line per cell (with --eval-every)
  models/<task>/<k>x<L>/   the trained models (a cell with a card.json is reused: the grid resumes),
                    each with its train_log.jsonl (a validation row every --eval-every steps)
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from latentcot.zoo.train import TrainConfig, train

DEFAULT_TASKS = ("addition:n=4,digits=2,reverse=1", "phop")
FAMILIES = ("base k⊗1", "1⊗L", "2⊗L")
MARKERS = {"base k⊗1": ("o", 10), "1⊗L": ("s", 7), "2⊗L": ("^", 5)}  # families share points: nest the markers


@dataclass(frozen=True)
class Cell:
    k: int  # layers in the block
    L: int  # loops

    @property
    def name(self) -> str:
        return f"{self.k}⊗{self.L}"

    @property
    def folder(self) -> str:
        """ASCII name, for folders and --cells: ``2x4``."""
        return f"{self.k}x{self.L}"

    @property
    def depth(self) -> int:
        return self.k * self.L

    @property
    def families(self) -> list[str]:
        """A k⊗1 model is the base point of its depth and the L = 1 point of the k⊗L family."""
        names = ["base k⊗1"] if self.L == 1 else []
        return names + ([f"{self.k}⊗L"] if self.k in (1, 2) else [])


def grid(quick: bool) -> list[Cell]:
    bases, loops = ((1, 2), (2,)) if quick else ((1, 2, 4, 8), (2, 4, 8))
    return [Cell(k, 1) for k in bases] + [Cell(k, L) for k in (1, 2) for L in loops]


def slug(task: str) -> str:
    return task.replace(":", "-").replace("=", "").replace(",", "-")


def cell_dir(root: Path, task: str, cell: Cell) -> Path:
    return root / "models" / slug(task) / cell.folder


def train_cell(task: str, cell: Cell, root: Path, args) -> dict:
    """Train one cell (or reuse a finished one); returns its card."""
    import json

    out = cell_dir(root, task, cell)
    if (out / "card.json").is_file():
        return json.loads((out / "card.json").read_text())
    arch = f"looped:k={cell.k},L={cell.L},pos={args.positions}"
    lr = args.lr * cell.L**-args.loop_lr_exponent
    cfg = TrainConfig(
        task=task,
        method="nocot",
        arch=arch,
        hidden=args.hidden,
        heads=args.heads,
        lr=lr,
        batch_size=args.batch_size,
        steps=args.steps,
        warmup=min(100, args.steps // 10),
        decay="cosine",
        seed=args.seed,
        eval_every=args.eval_every or args.steps,
        eval_examples=args.eval_examples,
        test_examples=args.test_examples,
    )
    resume = (out / "checkpoint.pt").is_file()
    return train(cfg, out, resume=resume, argv=["benchmarks/looped.py", task, cell.name], progress=not args.quiet)


def answer_characters(model_dir: Path, card: dict) -> list[float]:
    """Per character position, the share of the test answers having that position that get it right
    (greedy, the card's test examples): exact match hides a model that gets every digit but one.
    Cached in the cell's folder."""
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from latentcot.config import DecodeConfig
    from latentcot.engine import Engine
    from latentcot.gates import TokenGate
    from latentcot.latent import HiddenLatent
    from latentcot.tasks import load_task
    from latentcot.zoo.data import ANSWER_PREFIX, PROMPT_FILE

    cached = model_dir / "answer_positions.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    task = load_task(card["task"], str(model_dir / PROMPT_FILE))
    examples = task.examples("test", card["test_examples"], card["config"]["seed"])
    width = max(len(e.answer) for e in examples)
    engine, right = Engine(model, tokenizer), np.zeros(width)
    having = np.array([sum(len(e.answer) > i for e in examples) for i in range(width)])  # answers that have position i
    longest = max(len(tokenizer(f"{ANSWER_PREFIX} {e.answer}")["input_ids"]) for e in examples)
    decode = DecodeConfig(max_new_tokens=longest + 8, stop=task.stop)  # the grid trains question → answer
    for start in range(0, len(examples), 100):
        chunk = examples[start : start + 100]
        for example, trace in zip(
            chunk, engine.generate([task.prompt(e) for e in chunk], TokenGate(), HiddenLatent(), decode, seed=0)
        ):
            predicted = task.extract(trace.completion).prediction or ""
            right += [
                i < len(predicted) and predicted[i] == example.answer[i] if i < len(example.answer) else 0
                for i in range(width)
            ]
    shares = (right / having).round(4).tolist()
    cached.write_text(json.dumps(shares))
    return shares


def learning_curve(model_dir: Path) -> pd.DataFrame:
    """The cell's validation checks (step, valid_accuracy) from its train_log.jsonl."""
    path = model_dir / "train_log.jsonl"
    if not path.is_file() or not path.stat().st_size:
        return pd.DataFrame(columns=["step", "valid_accuracy"])
    return pd.read_json(path, lines=True)[["step", "valid_accuracy"]]


def first_step_reaching(curve: pd.DataFrame, level: float) -> int | None:
    """The first validation step at or above ``level`` (None if never): when a cell broke through."""
    reached = curve[curve["valid_accuracy"] >= level]
    return int(reached["step"].min()) if not reached.empty else None


def fit(rows: pd.DataFrame) -> pd.DataFrame:
    """accuracy ≈ α·ln(D) + β per (task, family), least squares over the family's cells."""
    fits = []
    for (task, family), group in rows.explode("family").groupby(["task", "family"], sort=False):
        x, y = np.log(group["depth"].to_numpy(float)), group["accuracy"].to_numpy(float)
        if len(set(x)) < 2:
            continue
        alpha, beta = np.polyfit(x, y, 1)
        fits.append({"task": task, "family": family, "alpha": alpha, "beta": beta, "points": len(group)})
    return pd.DataFrame(fits, columns=["task", "family", "alpha", "beta", "points"])


def markdown(rows: pd.DataFrame, fits: pd.DataFrame) -> str:
    tasks = list(dict.fromkeys(rows["task"]))
    lines = ["| cell | D | params | " + " | ".join(tasks) + " |", "|---|---|---|" + "---|" * len(tasks)]
    for name, group in rows.groupby("cell", sort=False):
        first = group.iloc[0]
        by_task = {
            r.task: f"{r.accuracy:.1%} [{' '.join(f'{c:.0%}' for c in r.answer_characters)}] "
            f"({r.steps} steps at lr {r.lr:.2g}, {r.seconds:.0f} s{reached(r.steps_to_half)})"
            for r in group.itertuples()
        }
        lines.append(
            f"| {name} | {first.depth} | {first.params:,} | " + " | ".join(by_task.get(t, "-") for t in tasks) + " |"
        )
    lines += [
        "",
        "Each cell: exact-match test accuracy [share right at each answer character], training budget "
        "(and the first validation check at >= 50 %, if any).",
        "",
        "Fits accuracy ≈ α·ln D + β:",
        "",
        "| task | family | α | β | points |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {f.task} | {f.family} | {f.alpha:.3f} | {f.beta:.3f} | {f.points} |" for f in fits.itertuples()]
    return "\n".join(lines) + "\n"


def reached(step) -> str:
    return "" if pd.isna(step) else f", 50 % at step {int(step)}"


def plot_curves(curves: dict[tuple[str, str], pd.DataFrame], path: Path) -> None:
    """Validation accuracy against step, one line per cell, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(task for task, _ in curves))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for (curve_task, cell), curve in curves.items():
            if curve_task == task and not curve.empty:
                ax.plot(curve["step"], curve["valid_accuracy"], marker=".", label=cell)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("validation accuracy")
        ax.set_title(task, fontsize=9)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot(rows: pd.DataFrame, fits: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(rows["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    colours = dict(zip(FAMILIES, plt.get_cmap("tab10").colors))
    long = rows.explode("family")
    for ax, task in zip(axes[0], tasks):
        for family in FAMILIES:
            points = long[(long["task"] == task) & (long["family"] == family)].sort_values("depth")
            if points.empty:
                continue
            marker, size = MARKERS[family]
            ax.plot(points["depth"], points["accuracy"], marker, markersize=size, color=colours[family], label=family)
            line = fits[(fits["task"] == task) & (fits["family"] == family)]
            if not line.empty:
                d = np.geomspace(points["depth"].min(), points["depth"].max(), 50)
                alpha, beta = line.iloc[0][["alpha", "beta"]]
                ax.plot(
                    d,
                    alpha * np.log(d) + beta,
                    "-",
                    color=colours[family],
                    alpha=0.7,
                    label=f"{alpha:.2f}·ln D + {beta:.2f}",
                )
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("effective depth D = k·L")
        ax.set_ylabel("test accuracy")
        ax.set_title(task, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--task", action="append", help="task spec (repeat); default: addition and phop")
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps per cell")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 cells, 30 steps, width 32")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument(
        "--loop-lr-exponent",
        type=float,
        default=0.0,
        help="train a cell looped L times at lr · L^-p (default p = 0: one lr for all; p = 1 "
        "compensates for a shared block whose every update acts L times)",
    )
    parser.add_argument(
        "--positions",
        choices=("learned", "rope"),
        default="learned",
        help="learned absolute positions (default: with rotary ones, 1-, 2- and 4-layer models all "
        "stayed at 1 %% on 4×2-digit addition after 3000 steps) or rope",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--eval-every",
        type=int,
        help="validation check every N steps, a learning curve in each "
        "cell's train_log.jsonl (default: once, at the end)",
    )
    parser.add_argument("--eval-examples", type=int, default=200)
    parser.add_argument("--test-examples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cells",
        help="train only these cells, e.g. 1x1,2x8 (to split the grid across "
        "processes sharing one --out; a later run without --cells collects them all)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.hidden, args.heads, args.batch_size = 30, 32, 2, 16
        args.eval_examples, args.test_examples = 20, 50
    tasks = args.task or list(DEFAULT_TASKS)
    args.out.mkdir(parents=True, exist_ok=True)
    cells = grid(args.quick)
    if args.cells:
        wanted = {name.strip() for name in args.cells.split(",")}
        unknown = wanted - {c.folder for c in cells}
        if unknown:
            parser.error(f"unknown cells {sorted(unknown)}; the grid has {', '.join(c.folder for c in cells)}")
        cells = [c for c in cells if c.folder in wanted]
    rows, curves = [], {}
    for task in tasks:
        for cell in cells:
            card, folder = train_cell(task, cell, args.out, args), cell_dir(args.out, task, cell)
            characters = answer_characters(folder, card)
            curves[task, cell.name] = learning_curve(folder)
            rows.append(
                {
                    "task": task,
                    "cell": cell.name,
                    "family": cell.families,
                    "k": cell.k,
                    "L": cell.L,
                    "depth": cell.depth,
                    "params": card["params"],
                    "steps": card["config"]["steps"],
                    "lr": card["config"]["lr"],
                    "seconds": card["train_seconds"],
                    "accuracy": card["test_accuracy"],
                    "test_examples": card["test_examples"],
                    "answer_characters": characters,
                    "steps_to_half": first_step_reaching(curves[task, cell.name], 0.5),
                }
            )
            print(
                f"{task} {cell.name}: accuracy {card['test_accuracy']:.1%} after {card['config']['steps']} steps "
                f"({card['train_seconds']:.0f} s)",
                flush=True,
            )
    table = pd.DataFrame(rows)
    fits = fit(table)
    table.assign(family=table["family"].map(";".join)).to_csv(args.out / "results.csv", index=False)
    fits.to_csv(args.out / "fits.csv", index=False)
    (args.out / "results.md").write_text(markdown(table, fits), encoding="utf-8")
    plot(table, fits, args.out / "accuracy_vs_depth.png")
    plot_curves(curves, args.out / "learning_curves.png")
    print(markdown(table, fits))
    return table


if __name__ == "__main__":
    main()
