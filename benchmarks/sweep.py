"""A K-threshold sweep in one process vs one `latentcot run` per setting, timed in the same script.

    python benchmarks/sweep.py [--thresholds 8] [--limit 32] [--hidden 256] [--layers 4] [--new-tokens 32]

Both sides are real CLI invocations (subprocesses) on the same saved random-init model and the
same settings: the sweep's K entropy-gated settings plus its token and latent baselines, i.e.
K + 2 separate runs. The sweep loads Python, torch and the model once and checks the tasks once;
the separate runs pay that per setting. Prints wall times and the ratio separate / sweep.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from latentcot.zoo.tiny import char_tokenizer, tiny_model


def latentcot(*args: str) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "latentcot", *args],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--thresholds", type=int, default=8, help="K, the number of thresholds")
    parser.add_argument("--limit", type=int, default=32, help="examples per setting")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()

    taus = [round(2.0 + 0.25 * i, 4) for i in range(args.thresholds)]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        tokenizer = char_tokenizer()
        tiny_model(
            "llama", tokenizer, seed=0, hidden=args.hidden, layers=args.layers, heads=4, positions=1024, init_std=0.2
        ).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        common = [
            "--model",
            str(model_dir),
            "--task",
            "addition:n=2,digits=1",
            "--limit",
            str(args.limit),
            "--max-new-tokens",
            str(args.new_tokens),
            "--batch-size",
            "16",
        ]

        sweep = latentcot(
            "sweep", *common, "--latent", "soft", "--thresholds", ",".join(map(str, taus)), "--out", f"{tmp}/sweep"
        )
        settings = [["--gate", "token"], ["--gate", "latent", "--latent", "soft"]]
        settings += [["--gate", "entropy", "--threshold", str(t), "--latent", "soft"] for t in taus]
        separate = sum(latentcot("run", *common, *s, "--out", f"{tmp}/run{i}") for i, s in enumerate(settings))

        n_records = len(settings) * args.limit
        same = (Path(tmp) / "sweep" / "samples.jsonl").read_text().count("\n") == n_records
    print(
        f"{len(settings)} settings (K={args.thresholds} thresholds + token + latent) x {args.limit} examples, "
        f"llama d={args.hidden} L={args.layers}, {args.new_tokens} new positions"
    )
    print(f"  one sweep:                 {sweep:7.1f} s")
    print(f"  {len(settings)} separate runs:          {separate:7.1f} s")
    print(f"  separate / sweep:          {separate / sweep:7.2f}x   (records complete: {same})")


if __name__ == "__main__":
    main()
