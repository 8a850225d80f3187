"""COCONUT's Table 1 at small scale: the built-in models of one family, each decoded as it was trained.

    python benchmarks/coconut_table.py [--family prosqa-4hop-2forks] [--limit 500]

A family is the built-in models named ``<family>-<method>`` (cot, nocot, coconut, soft). Each decodes
the first ``--limit`` test problems of its card's task greedily, with its card's decoding (token CoT,
no CoT, COCONUT's k latents between its markers, or the entropy gate it was trained with), through the
engine that ``latentcot run`` uses. Prints accuracy with its 95 % Wilson interval per model and, for
reference, the paper's ProsQA figures (GPT-2: CoT 77.5 %, no-CoT 76.7 %, COCONUT 97.0 %) beside a ProsQA family.
"""

from __future__ import annotations

import argparse

from latentcot.analysis.stats import wilson_interval
from latentcot.config import ModelConfig
from latentcot.model import load_model
from latentcot.tasks import load_task
from latentcot.zoo.registry import list_models
from latentcot.zoo.train import evaluate

MEMBERS = ("nocot", "cot", "coconut", "soft")
PAPER = {"nocot": "76.7 %", "cot": "77.5 %", "coconut": "97.0 %"}  # COCONUT (2024), Table 1, ProsQA, GPT-2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="prosqa-4hop-2forks")
    parser.add_argument("--limit", type=int, default=500)
    args = parser.parse_args()
    zoo = {m.name: m for m in list_models()}
    rows = [(member, zoo[f"{args.family}-{member}"]) for member in MEMBERS if f"{args.family}-{member}" in zoo]
    if not rows:
        raise SystemExit(f"no built-in model named {args.family}-<{'|'.join(MEMBERS)}> (`latentcot models`)")
    paper = PAPER if args.family.startswith("prosqa") else {}  # the paper's figures are ProsQA's
    print(f"{'model':<32} {'decoding':<34} {'accuracy':>8}  95 % Wilson      paper (GPT-2)")
    for member, model in rows:
        card = model.card
        task = load_task(card["task"], str(model.path / card["prompt"]))
        examples = task.examples("test", args.limit, card["config"]["seed"])
        loaded = load_model(ModelConfig(str(model.path), device="cpu", dtype="float32"))
        accuracy = evaluate(loaded.model, loaded.tokenizer, task, examples, card["decode"])
        correct = round(accuracy * len(examples))
        lo, hi = (float(v) for v in wilson_interval(correct, len(examples)))
        decoding = ",".join(f"{k}={v}" for k, v in card["decode"].items() if k != "markers")
        print(f"{model.name:<32} {decoding:<34} {accuracy:>8.1%}  [{lo:.1%}, {hi:.1%}]  {paper.get(member, '–')}")


if __name__ == "__main__":
    main()
