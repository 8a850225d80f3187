"""Engine speed, as ratios against baselines measured in the same process on the same model.

    python benchmarks/engine.py [--arch llama] [--hidden 256] [--layers 4] [--new-tokens 64] [--device cpu]

Prints, for batch 1 and 32:
  * engine token mode vs HF ``generate`` (greedy, same prompts, fixed length): speed-up = HF time / engine time;
  * hybrid entropy-gated decoding (about half the steps latent) vs a bare forward loop with the same
    KV cache and no bookkeeping: overhead = hybrid time / bare time;
  * tokens/s at each batch size.
Each figure is the median of --repeats interleaved runs (machines here are noisy).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from latentcot.config import DecodeConfig
from latentcot.engine import Engine
from latentcot.gates import EntropyGate, TokenGate
from latentcot.kvcache import preallocated_cache
from latentcot.latent import HiddenLatent
from latentcot.zoo.tiny import char_tokenizer, tiny_model
from timing import timed

PROMPT_WORDS = "Every wumpus is a yumpus and every yumpus is a zumpus so what is a wumpus".split()


def prompts_for(batch: int) -> list[str]:
    """Mixed lengths, so batches are left-padded as in real runs."""
    return [" ".join(PROMPT_WORDS[: 4 + (i * 5) % 12]) for i in range(batch)]


@torch.inference_mode()
def bare_loop(model, tokenizer, prompts, n_new: int) -> None:
    """The floor: prefill, then one cached forward per step feeding back argmax embeddings."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left").to(model.device)
    mask = enc["attention_mask"]
    batch, width = mask.shape
    full = torch.ones(batch, width + n_new, dtype=mask.dtype, device=model.device)
    full[:, :width] = mask
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    cache = preallocated_cache(model.config, capacity=width + n_new)  # the engine's cache
    embed = model.get_input_embeddings()
    out = model(**enc, position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=1)
    nxt = positions[:, -1:] + 1
    for t in range(n_new - 1):
        x = embed(out.logits[:, -1].argmax(-1))[:, None]
        out = model(
            inputs_embeds=x,
            attention_mask=full[:, : width + t + 1],
            position_ids=nxt,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        nxt = nxt + 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="llama")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=None, help="output vocabulary (default: the tokenizer's 102)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()

    tokenizer = char_tokenizer()
    model = tiny_model(
        args.arch,
        tokenizer,
        hidden=args.hidden,
        layers=args.layers,
        heads=args.heads,
        init_std=0.2 if args.vocab is None else 0.02,
        vocab_size=args.vocab,
    )
    model = model.to(device=args.device, dtype=getattr(torch, args.dtype))
    engine = Engine(model, tokenizer)
    n = args.new_tokens
    cfg = DecodeConfig(max_new_tokens=n, ignore_eos=True)
    print(
        f"model {args.arch} d={args.hidden} L={args.layers} V={model.config.vocab_size} "
        f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
        f"params) {args.dtype} on {args.device}, {n} new tokens, threads={torch.get_num_threads()}, "
        f"median of {args.repeats}"
    )
    for batch in [int(b) for b in args.batches.split(",")]:
        prompts = prompts_for(batch)
        enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left").to(args.device)
        # correctness on the side: with EOS honoured, token mode must equal HF greedy output
        natural = engine.generate(prompts, TokenGate(), HiddenLatent(), DecodeConfig(max_new_tokens=n))
        reference = model.generate(**enc, max_new_tokens=n, do_sample=False)[:, enc["input_ids"].shape[1] :]
        same = all(tr.token_id == ref[: tr.n_steps] for tr, ref in zip(natural, reference.tolist()))
        token_traces = engine.generate(prompts, TokenGate(), HiddenLatent(), cfg)
        entropies = [h for tr in token_traces for h in tr.entropy]
        gate = EntropyGate(threshold=statistics.median(entropies))
        runs = {
            "hf_generate": lambda: model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False),
            "engine_token": lambda: engine.generate(prompts, TokenGate(), HiddenLatent(), cfg),
            "engine_hybrid": lambda: engine.generate(prompts, gate, HiddenLatent(), cfg),
            "bare_loop": lambda: bare_loop(model, tokenizer, prompts, n),
        }
        for fn in runs.values():  # warm-up
            fn()
        times = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, fn in runs.items():
                times[name].append(timed(fn, args.device))
        med = {name: statistics.median(ts) for name, ts in times.items()}
        traces = engine.generate(prompts, gate, HiddenLatent(), cfg)
        latent_share = sum(t.n_latent for t in traces) / sum(t.n_steps for t in traces)
        print(
            f"batch {batch:>3}: engine token mode {med['hf_generate'] / med['engine_token']:.2f}x HF generate "
            f"(target >= 1.3) | hybrid {med['engine_hybrid'] / med['bare_loop']:.3f}x bare loop "
            f"(target <= 1.10; {latent_share:.0%} latent steps) | "
            f"engine {batch * n / med['engine_token']:.0f} tok/s, HF {batch * n / med['hf_generate']:.0f} tok/s, "
            f"bare {batch * n / med['bare_loop']:.0f} tok/s | tokens identical to HF: {same}"
        )


if __name__ == "__main__":
    main()
