"""Prefix-shared vs separate decoding of one threshold sweep, in one process, on the same examples.

    python benchmarks/sweep.py [--thresholds 8] [--limit 32] [--new-tokens 48] [--repeats 2]

For each case, the K entropy thresholds plus the token and latent baselines (K + 2 settings) are
decoded twice as work units on the local executor — the code ``latentcot sweep`` runs — once as
prefix-shared trees and once with ``--no-share`` (every setting on its own), alternating the order
over repeats. Cases:

  (a) the built-in CoT models on their own tasks, thresholds 0.1 .. 1.5 nats (a typical user sweep);
  (b) a random-init model whose step entropies spread over the thresholds (thresholds at the
      quantiles of its own token-mode entropies), i.e. a tree that forks a lot.

Printed per case: distinct trajectories per example; forward rows shared / separate; forward rows /
trie nodes (the rows no decoder can avoid: distinct (example, input prefix) pairs of the settings'
traces, the work units' ``plain_rows``); wall time shared / separate (best of the repeats); and whether
the records agree.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from latentcot.config import DecodeConfig, GateConfig, LatentConfig, ModelConfig  # noqa: E402
from latentcot.engine import Engine  # noqa: E402
from latentcot.executors import LocalExecutor, Worker, make_units, setting_families  # noqa: E402
from latentcot.experiment import DecodeCost, Setting  # noqa: E402
from latentcot.gates import TokenGate  # noqa: E402
from latentcot.latent import SoftLatent  # noqa: E402
from latentcot.model import load_model  # noqa: E402
from latentcot.tasks import load_task  # noqa: E402
from latentcot.zoo.registry import resolve  # noqa: E402
from latentcot.zoo.tiny import char_tokenizer, tiny_model  # noqa: E402

torch.set_num_threads(max(1, os.cpu_count() or 1))


def settings_for(taus: list[float], new_tokens: int) -> list[Setting]:
    decode = DecodeConfig(max_new_tokens=new_tokens)
    soft = LatentConfig("soft")
    gates = [GateConfig("token"), GateConfig("latent"), *(GateConfig("entropy", threshold=t) for t in taus)]
    return [Setting(g, soft if g.kind != "token" else LatentConfig(), decode) for g in gates]


def decode(engine, task, examples, settings, share: bool, batch_size: int, max_rows: int):
    """What ``latentcot sweep`` does for one task, minus the run store: work units on the local executor."""
    tasks, cost, records = [(task, examples)], DecodeCost(), []
    families = setting_families(settings, share)
    worker = Worker(engine, tasks, settings, families, seed=0, max_rows=max_rows)
    started = time.perf_counter()
    for result in LocalExecutor(worker).run(make_units(tasks, settings, families, set(), batch_size)):
        records += result.records
        cost.add(result)
    return time.perf_counter() - started, cost, records


def same_records(a: list[dict], b: list[dict]) -> bool:
    key = lambda r: (r["setting_id"], r["example_id"])  # noqa: E731
    strip = lambda r: (r["completion"], r["steps"]["mode"], r["steps"]["token_id"])  # noqa: E731
    return {key(r): strip(r) for r in a} == {key(r): strip(r) for r in b}


def case(name, engine, task, examples, taus, args, max_rows=None) -> None:
    """``max_rows``: live rows of a tree (default: the CLI's, 4 x the batch size)."""
    settings = settings_for(taus, args.new_tokens)
    max_rows = max_rows or 4 * args.batch_size
    times = {True: [], False: []}
    for repeat in range(args.repeats):
        for share in (True, False) if repeat % 2 == 0 else (False, True):
            seconds, cost, records = decode(engine, task, examples, settings, share, args.batch_size, max_rows)
            times[share].append(seconds)
            if share:
                shared_cost, shared_records = cost, records
            else:
                separate_cost, separate_records = cost, records
    wall = min(times[True]) / min(times[False])
    print(
        f"{name:<44} {len(settings):>3} settings x {len(examples):>3} ex | max rows {max_rows:>4} | "
        f"trajectories/ex {shared_cost.trajectories / len(examples):5.2f} | "
        f"forward rows shared/separate {shared_cost.forward_rows / separate_cost.forward_rows:5.2f}x | "
        f"rows/trie nodes {shared_cost.forward_rows / shared_cost.plain_rows:5.2f} | "
        f"wall shared/separate {wall:5.2f}x ({min(times[True]):.1f} s vs {min(times[False]):.1f} s) | "
        f"records agree: {same_records(shared_records, separate_records)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--thresholds", type=int, default=8, help="K, the number of thresholds")
    parser.add_argument("--limit", type=int, default=32, help="examples per case")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per side (alternating order)")
    args = parser.parse_args()
    k = args.thresholds
    print(f"K = {k} thresholds + token + latent; torch threads {torch.get_num_threads()}")

    for model_name in ("addition-4x2r-cot", "prosqa-2hop-cot"):
        directory = resolve(model_name)
        loaded = load_model(ModelConfig(str(directory)))
        engine = Engine(loaded.model, loaded.tokenizer)
        card_task = json.loads((directory / "card.json").read_text())["task"]
        task = load_task(card_task, str(directory / "prompt.json"))
        examples = task.examples("test", args.limit, 0)
        taus = [round(0.1 + (1.4 * i) / max(k - 1, 1), 4) for i in range(k)]
        case(f"(a) builtin:{model_name}", engine, task, examples, taus, args)

    tokenizer = char_tokenizer()
    model = tiny_model("llama", tokenizer, seed=0, hidden=128, layers=4, heads=4, positions=1024, init_std=0.2)
    # float64: feeding latents back amplifies fp32 rounding ~10x per step in a random model, and batch shapes
    # differ between the two sides; in float64 the records must agree exactly
    engine = Engine(model.double().eval(), tokenizer)
    task = load_task("addition:n=2,digits=1")
    examples = task.examples("test", args.limit, 0)
    probe = engine.generate(
        [task.prompt(e) for e in examples], TokenGate(), SoftLatent(), DecodeConfig(args.new_tokens)
    )
    h = torch.tensor([x for t in probe for x in t.entropy])
    taus = [round(float(q), 4) for q in h.quantile(torch.linspace(0.05, 0.95, k))]
    room = args.batch_size * (k + 2)  # every example may split into every setting: forks never spill
    case("(b) random llama fp64, spread entropies", engine, task, examples, taus, args, room)
    case("(b) the same, forks spill past 4 x batch", engine, task, examples, taus, args)


if __name__ == "__main__":
    main()
