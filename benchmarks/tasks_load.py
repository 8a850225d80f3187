"""Dataset loading speed against the 2 s budget for 10,000 examples.

    python benchmarks/tasks_load.py [--n 10000] [--repeats 3]

Writes --n examples in each file format to a temporary folder (COCONUT ``.json`` from generated
ProsQA problems, GSM8K ``.jsonl`` and generic ``.jsonl`` from generated iGSM problems), then
times ``load_task(path).examples("test", None, 0)``: reading, validation, answer-kind inference
and template loading. Prints the best of --repeats runs per format, in seconds, and its ratio to
the budget (below 1 is within budget).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from latentcot.tasks import load_task, write_coconut_json

BUDGET_S = 2.0


def write_files(folder: Path, n: int) -> dict[str, Path]:
    prosqa = load_task("prosqa").examples("train", n, 0)
    igsm = load_task("igsm").examples("train", n, 0)
    paths = {
        "coconut .json": folder / "prosqa.json",
        "gsm8k .jsonl": folder / "gsm8k.jsonl",
        "generic .jsonl": folder / "generic.jsonl",
    }
    write_coconut_json(prosqa, paths["coconut .json"])
    with open(paths["gsm8k .jsonl"], "w") as handle:
        for e in igsm:
            solution = "\n".join(f"{s} <<{s.rsplit('= ', 1)[1]}>>" for s in e.steps)
            handle.write(json.dumps({"question": e.question, "answer": f"{solution}\n#### {e.answer}"}) + "\n")
    with open(paths["generic .jsonl"], "w") as handle:
        for e in igsm:
            handle.write(
                json.dumps(
                    {"id": e.id, "question": e.question, "answer": e.answer, "steps": list(e.steps), "domain": e.domain}
                )
                + "\n"
            )
    return paths


def time_load(path: Path, n: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        examples = load_task(str(path)).examples("test", None, 0)
        best = min(best, time.perf_counter() - start)
        assert len(examples) == n, (path, len(examples))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        paths = write_files(Path(folder), args.n)
        print(f"generated and wrote {args.n} examples per format in {time.perf_counter() - start:.2f} s")
        for label, path in paths.items():
            seconds = time_load(path, args.n, args.repeats)
            size = path.stat().st_size / 2**20
            print(
                f"{label:15s} {args.n} examples ({size:5.1f} MiB): {seconds:.3f} s  "
                f"ratio to {BUDGET_S:.0f} s budget: {seconds / BUDGET_S:.3f}"
            )


if __name__ == "__main__":
    main()
