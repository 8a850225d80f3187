"""Where a trained zoo model goes wrong: teacher-forced accuracy and entropy at every token of every gold step.

    python benchmarks/teacher_forced.py --model builtin:prosqa-3hop-forks-cot \\
        --task prosqa:hops=3,dead=2,distract=1,extra=0,branches=2 --examples 300

Feeds each test example's prompt and gold solution (steps, then the answer line) and reads, at every
position, whether the model's argmax is the gold token and the entropy of its next-token distribution.
Prints one row per step (the answer line last) and one column per token of that line: accuracy, then
mean entropy in nats. A step the model resolves has accuracy near 1 and entropy near 0 everywhere; a
fork it cannot resolve shows as one column with low accuracy and entropy near ln(children); a fact it
cannot look up shows the same at a line with a single correct continuation.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from latentcot.config import ModelConfig
from latentcot.model import load_model
from latentcot.tasks import load_task
from latentcot.zoo.data import ANSWER_PREFIX
from latentcot.zoo.registry import builtin_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a zoo model: builtin:NAME or a trained model directory")
    ap.add_argument("--task", required=True)
    ap.add_argument("--examples", type=int, default=300)
    args = ap.parse_args()

    path = builtin_path(args.model) or Path(args.model)
    loaded = load_model(ModelConfig(str(path), dtype="float32"))
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    task = load_task(args.task, str(path / "prompt.json"))
    hits: dict[tuple[int, int], list[float]] = {}  # (line, token) -> [correct, entropy, count]
    for example in task.examples("test", args.examples, 0):
        lines = [*example.steps, f"{ANSWER_PREFIX} {example.answer}"]
        prompt = tokenizer(task.prompt(example))["input_ids"]
        spans, ids = [], list(prompt)
        for k, line in enumerate(lines):
            piece = tokenizer(("\n" if k else "") + line, add_special_tokens=False)["input_ids"]
            spans.append((len(ids), len(ids) + len(piece)))
            ids += piece
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()  # (T, V)
        probs = logits.softmax(-1)
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)  # (T,)
        for k, (start, end) in enumerate(spans):
            for j, pos in enumerate(range(start, end)):
                cell = hits.setdefault((k, j), [0.0, 0.0, 0])
                cell[0] += float(logits[pos - 1].argmax() == ids[pos])
                cell[1] += float(entropy[pos - 1])
                cell[2] += 1
    n_lines = 1 + max(k for k, _ in hits)
    print(f"{args.model} on {args.task}, {args.examples} test examples: accuracy / mean entropy (nats) per token")
    for k in range(n_lines):
        cells = [hits[(k, j)] for j in range(1 + max(j for kk, j in hits if kk == k))]
        name = "answer" if k == n_lines - 1 else f"step {k + 1}"
        print(f"{name:>7}: " + "  ".join(f"{c[0] / c[2]:.2f}/{c[1] / c[2]:.2f}" for c in cells))


if __name__ == "__main__":
    main()
