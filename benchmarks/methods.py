"""Decode cost of every named method relative to token mode, measured in the same process on the same model.

    python benchmarks/methods.py [--batch 16] [--new-tokens 64] [--repeats 3] [--vocab V] [--device cpu] [--threads N]
                                 [--quick]

Every method of ``latentcot methods`` decodes the same batch of prompts on one random-init model with
EOS ignored, so every setting decodes exactly ``--new-tokens`` steps and time per step compares directly.
Each setting is built as ``--method`` builds it (``parse_method`` → ``Setting.of_method`` → the model's
thought markers → ``make_gate``, ``make_latent``) with the method's defaults, except what a method
requires: ``coconut`` its ``k`` (``--coconut-k``, 4; it decodes between the tokenizer's ``<bot>``/``<eot>``,
as ``markers=auto`` does) and ``entropy`` a threshold (``--threshold``; default: the median next-token
entropy of the token-mode run, so about half its steps go latent). Cold Stop keeps its default of 256
low-entropy steps in a row, which a run shorter than that never reaches: soft-thinking, random-soft and
multiplex are latent at every step here, their cost with thinking never stopped.

Prints per method: tokens/s (every generated position counts, latent or not; median of ``--repeats``
runs), the ratio of its time per step to token mode's, and the share of latent steps. Runs are
interleaved: after one warm-up run of each setting, every round runs each method right after a
token-mode run, and the ratio is the median over rounds of method time / that token time.
``--quick``: a smoke configuration (options given on the command line still apply).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from latentcot.config import DecodeConfig
from latentcot.engine import Engine
from latentcot.experiment import Setting
from latentcot.gates import make_gate
from latentcot.latent import make_latent
from latentcot.methods import METHODS, parse_method
from latentcot.zoo.tiny import char_tokenizer, tiny_model
from timing import timed

PROMPT_WORDS = "Every wumpus is a yumpus and every yumpus is a zumpus so what is a wumpus".split()
QUICK = {"batch": 2, "new_tokens": 8, "repeats": 1, "hidden": 64, "layers": 2, "threads": 1}


def prompts_for(batch: int) -> list[str]:
    """Mixed lengths, so batches are left-padded as in real runs (as benchmarks/engine.py)."""
    return [" ".join(PROMPT_WORDS[: 4 + (i * 5) % 12]) for i in range(batch)]


def method_specs(coconut_k: int, threshold: float) -> list[str]:
    """One ``--method`` spec per registered method: its defaults, plus what it requires."""
    required = {"coconut": f"k={coconut_k}", "entropy": f"threshold={threshold:.6g}"}
    return [f"{m.name}:{required[m.name]}" if m.name in required else m.name for m in METHODS]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="llama")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=None, help="output vocabulary (default: the tokenizer's 102)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--coconut-k", type=int, default=4, help="coconut's leading latent steps")
    ap.add_argument("--threshold", type=float, default=None, help="entropy threshold in nats (default: median H)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is steadier on a busy machine)")
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: " + ", ".join(f"{k}={v}" for k, v in QUICK.items())
    )
    args = ap.parse_args()
    if args.quick:  # the smoke configuration, for what the command line leaves at its default
        ap.set_defaults(**QUICK)
        args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    tokenizer = char_tokenizer()
    model = tiny_model(
        args.arch,
        tokenizer,
        hidden=args.hidden,
        layers=args.layers,
        heads=args.heads,
        init_std=0.2 if args.vocab is None else 0.02,  # as benchmarks/engine.py
        vocab_size=args.vocab,
    )
    model = model.to(device=args.device, dtype=getattr(torch, args.dtype))
    engine = Engine(model, tokenizer)
    prompts = prompts_for(args.batch)
    decode = DecodeConfig(max_new_tokens=args.new_tokens, ignore_eos=True)

    def decode_with(setting: Setting):
        return engine.generate(prompts, make_gate(setting.gate), make_latent(setting.latent), setting.decode, seed=0)

    threshold = args.threshold
    if threshold is None:  # the token run's median entropy: about half the entropy method's steps go latent
        token = decode_with(Setting.of_method(parse_method("token"), decode))
        threshold = statistics.median(h for trace in token for h in trace.entropy)
    settings = {}  # method name -> (its --method spec, its setting)
    for spec in method_specs(args.coconut_k, threshold):
        setting = Setting.of_method(parse_method(spec), decode).with_model_markers(tokenizer)  # as a run does
        settings[setting.method.name] = (spec, setting)

    latent_share = {}
    for name, (_, setting) in settings.items():  # warm-up, and the latent share (deterministic in the seed)
        traces = decode_with(setting)
        latent_share[name] = sum(t.n_latent for t in traces) / sum(t.n_steps for t in traces)
    # Each round times every method right after a token-mode run: a ratio compares two neighbouring
    # runs, so a machine that slows down or speeds up over the benchmark shifts both sides alike.
    token_setting = settings["token"][1]
    times = {name: [] for name in settings}
    ratios = {name: [] for name in settings}
    for _ in range(args.repeats):
        for name, (_, setting) in settings.items():
            if name == "token":
                continue
            base = timed(lambda: decode_with(token_setting), args.device)
            times["token"].append(base)
            times[name].append(timed(lambda: decode_with(setting), args.device))
            ratios[name].append(times[name][-1] / base)
    ratios["token"] = [1.0]
    med = {name: statistics.median(ts) for name, ts in times.items()}

    print(
        f"model {args.arch} d={args.hidden} L={args.layers} V={model.config.vocab_size} "
        f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params) {args.dtype} on {args.device}, "
        f"batch {args.batch}, {args.new_tokens} new tokens (EOS ignored), threads={torch.get_num_threads()}, "
        f"median of {args.repeats}; entropy threshold {threshold:.3g} nats"
    )
    steps = args.batch * args.new_tokens
    rows = [
        (name, spec, f"{steps / med[name]:.0f}", f"{statistics.median(ratios[name]):.2f}x", f"{latent_share[name]:.0%}")
        for name, (spec, _) in settings.items()
    ]
    header = ("method", "as --method", "tokens/s", "time/step vs token", "latent steps")
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


if __name__ == "__main__":
    main()
