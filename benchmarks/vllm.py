"""vLLM backend speed against the hf engine, on the same model and prompts, measured in the same run.

    python benchmarks/vllm.py [--hidden 256] [--layers 4] [--new-tokens 64] [--batches 1,32] [--device cpu]
    python benchmarks/vllm.py --qwen05b --device cuda --batches 1,64     # a ~0.5B Qwen2-shaped model

Prints, per batch size:
  * token arm (greedy, fixed length, per-step entropy/p_token/p_max recorded by both):
    vLLM tokens/s, hf engine tokens/s, speed-up = hf time / vLLM time;
  * hybrid arm (entropy gate at the median entropy, soft latents): the same ratio, and the latent share;
  * latent arm (every step latent, soft): vLLM's latent steps/s as a share of its own token arm's
    tokens/s, the figure that says what a latent step costs inside vLLM (on GPUs, Model Runner V2 runs
    them in the engine; on CPU, V1 re-prefills: the header says which);
  * whether the token arm's tokens are identical on both backends.
Each figure is the median of --repeats interleaved runs. Random-init weights, saved to a temporary
directory for vLLM. On CPU set VLLM_ENABLE_V1_MULTIPROCESSING=0 (``make bench-vllm`` does).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from timing import timed  # before this folder leaves sys.path (below)

# Run as a script, this file's folder comes first on sys.path, where its name would shadow the vllm package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch

from latentcot.config import BackendConfig, DecodeConfig, ModelConfig
from latentcot.engine import Engine
from latentcot.gates import EntropyGate, LatentGate, TokenGate
from latentcot.latent import SoftLatent
from latentcot.zoo.tiny import char_tokenizer, tiny_model

PROMPT_WORDS = "Every wumpus is a yumpus and every yumpus is a zumpus so what is a wumpus".split()


def prompts_for(batch: int) -> list[str]:
    """Mixed lengths, as in real runs."""
    return [" ".join(PROMPT_WORDS[: 4 + (i * 5) % 12]) for i in range(batch)]


def qwen05b_model(tokenizer):
    """Qwen2-0.5B's shape (d 896, 24 layers, 14 heads / 2 KV heads, V 151936), random init."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "qwen2",
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="llama")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4, help="head_dim = hidden / heads must be >= 32 on vLLM's CPU")
    ap.add_argument("--qwen05b", action="store_true", help="a ~0.5B-parameter Qwen2-shaped model instead")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="of the hf engine")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--kv-cache-gib", type=float, default=None, help="vLLM KV cache (default: 1 on CPU)")
    args = ap.parse_args()

    from latentcot.backends.vllm import VLLMEngine

    tokenizer = char_tokenizer()
    model = (
        qwen05b_model(tokenizer)
        if args.qwen05b
        else tiny_model(args.arch, tokenizer, hidden=args.hidden, layers=args.layers, heads=args.heads, init_std=0.2)
    )
    model = model.to(dtype=getattr(torch, args.dtype))
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(Path(tmp) / "model")
        tokenizer.save_pretrained(Path(tmp) / "model")
        on_cpu = args.device == "cpu"
        backend = BackendConfig("vllm", kv_cache_gib=args.kv_cache_gib or (1.0 if on_cpu else None))
        vllm_engine = VLLMEngine.load(ModelConfig(str(Path(tmp) / "model"), dtype=args.dtype), backend)
    model = model.to(args.device)
    hf_engine = Engine(model, tokenizer)
    n = args.new_tokens
    cfg = DecodeConfig(max_new_tokens=n, ignore_eos=True)
    print(
        f"model {model.config.model_type} d={model.config.hidden_size} L={model.config.num_hidden_layers} "
        f"V={model.config.vocab_size} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params) {args.dtype}, "
        f"hf on {args.device}, vLLM on {vllm_engine.identity['device']} (model runner "
        f"{vllm_engine.identity['model_runner']}, latent steps {vllm_engine.identity['latent_steps']}), "
        f"{n} new tokens, "
        f"threads={torch.get_num_threads()}, median of {args.repeats}"
    )
    for batch in [int(b) for b in args.batches.split(",")]:
        prompts = prompts_for(batch)
        natural = DecodeConfig(max_new_tokens=n)
        same = [t.token_id for t in vllm_engine.generate(prompts, TokenGate(), SoftLatent(), natural)] == [
            t.token_id for t in hf_engine.generate(prompts, TokenGate(), SoftLatent(), natural)
        ]
        probe = hf_engine.generate(prompts, TokenGate(), SoftLatent(), cfg)
        gate = EntropyGate(threshold=statistics.median(h for t in probe for h in t.entropy))
        runs = {
            "vllm_token": lambda: vllm_engine.generate(prompts, TokenGate(), SoftLatent(), cfg),
            "hf_token": lambda: hf_engine.generate(prompts, TokenGate(), SoftLatent(), cfg),
            "vllm_hybrid": lambda: vllm_engine.generate(prompts, gate, SoftLatent(), cfg),
            "hf_hybrid": lambda: hf_engine.generate(prompts, gate, SoftLatent(), cfg),
            "vllm_latent": lambda: vllm_engine.generate(prompts, LatentGate(), SoftLatent(), cfg),
        }
        for fn in runs.values():  # warm-up
            fn()
        times = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, fn in runs.items():
                times[name].append(timed(fn, args.device))
        med = {name: statistics.median(ts) for name, ts in times.items()}
        traces = vllm_engine.generate(prompts, gate, SoftLatent(), cfg)
        latent_share = sum(t.n_latent for t in traces) / sum(t.n_steps for t in traces)
        print(
            f"batch {batch:>3}: token arm vLLM {med['hf_token'] / med['vllm_token']:.2f}x the hf engine "
            f"({batch * n / med['vllm_token']:.0f} vs {batch * n / med['hf_token']:.0f} tok/s) | "
            f"hybrid vLLM {med['hf_hybrid'] / med['vllm_hybrid']:.2f}x the hf engine "
            f"({latent_share:.0%} latent steps; {batch * n / med['vllm_hybrid']:.0f} vs "
            f"{batch * n / med['hf_hybrid']:.0f} steps/s) | latent arm {med['vllm_token'] / med['vllm_latent']:.2f}x "
            f"vLLM's token throughput | token arm tokens identical: {same}"
        )


if __name__ == "__main__":
    main()
