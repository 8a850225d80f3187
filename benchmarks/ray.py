"""The Ray executor with 1 vs 2 workers (and the local executor), same sweep, same process.

    python benchmarks/ray.py [--limit 48] [--new-tokens 32] [--batch-size 4]

A K = 4 threshold sweep (plus both baselines) of a random-init Llama on a generated task, cut into work
units of --batch-size examples. Each side starts its executor (a local Ray cluster, actors loading the
model), then decodes every unit; start-up and decoding are timed apart. Ray gives each actor one CPU, and
torch in an actor then runs on one thread; the local executor uses every core in one process. Prints
decode seconds and ratios against one Ray worker, and checks that the records agree.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, where its name would shadow the ray package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from latentcot.backends import load_backend
from latentcot.config import DecodeConfig, ExecutorConfig, LatentConfig, ModelConfig
from latentcot.executors import LocalExecutor, RayExecutor, Worker, make_units, setting_families
from latentcot.experiment import Plan, load_examples
from latentcot.grid import sweep_settings
from latentcot.zoo.tiny import char_tokenizer, tiny_model


def timed(make_runner, units):
    started = time.perf_counter()
    runner = make_runner()
    ready = time.perf_counter()
    records = []
    try:
        for result in runner.run(units):
            records += result.records
    finally:
        runner.close()
    done = time.perf_counter()
    return ready - started, done - ready, {(r["setting_id"], r["example_id"]): r["completion"] for r in records}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=48)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = char_tokenizer()
        model = tiny_model("llama", tokenizer, seed=0, hidden=256, layers=4, heads=4, positions=1024, init_std=0.2)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        decode = DecodeConfig(max_new_tokens=args.new_tokens)
        settings = tuple(sweep_settings([3.0, 3.3, 3.6, 3.9], [LatentConfig("soft")], decode))
        plan = Plan(ModelConfig(tmp), ("addition:n=3,digits=2",), settings, limit=args.limit)
        tasks = load_examples(plan)
        families = setting_families(settings, share=True)
        units = make_units(tasks, settings, families, set(), args.batch_size)
        rows = 4 * args.batch_size

        def local():
            engine = load_backend(plan.model, plan.backend).engine
            return LocalExecutor(Worker(engine, tasks, settings, families, seed=0, max_rows=rows))

        def ray(workers):
            def start():
                runner = RayExecutor(ExecutorConfig("ray", workers=workers), plan, families, rows)
                runner.worker_pids()  # returns once every actor has loaded the model
                return runner

            return start

        print(
            f"{len(settings)} settings x {args.limit} examples in {len(units)} units of {args.batch_size}, "
            f"llama d=256 L=4, {args.new_tokens} new positions, {os.cpu_count()} cores, "
            f"driver torch threads {torch.get_num_threads()}"
        )
        results = {
            "local executor": timed(local, units),
            "ray, 1 worker": timed(ray(1), units),
            "ray, 2 workers": timed(ray(2), units),
        }
        base = results["ray, 1 worker"][1]
        reference = results["local executor"][2]
        for name, (start, seconds, records) in results.items():
            print(
                f"  {name:<16} start {start:5.1f} s  decode {seconds:6.1f} s  {seconds / base:5.2f}x one worker"
                f"  records agree with local: {records.keys() == reference.keys()}"
            )


if __name__ == "__main__":
    main()
