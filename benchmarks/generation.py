"""Generation speed: KV cache vs recomputing the prefix, one batched guided UNet call vs two.

1. Tokens per second of ``minigpt5.generate.generate`` on an LLM larger than the tiny
   preset (256 wide x 4 layers by default), greedy, text only (``max_images=0``, and
   ``min_new_tokens`` = ``max_new_tokens`` so every run writes the same number of
   tokens), ~100-token prompt, 200 new tokens: ``use_cache=True`` (one token fed per
   step with the KV cache) against ``use_cache=False`` (the whole prefix recomputed for
   every token). The two must write the same tokens; the script checks it.
   Goal: cached / recomputed tokens/s >= 5.
2. One guided denoising step on a UNet larger than the tiny one ((64, 128), cross-attention
   128, the tiny VAE's 16 px latents of 32 px images): ``guided_prediction`` with
   ``scale != 1`` (latents doubled, one UNet call on [uncond, cond], ``chunk(2)``) against
   two separate UNet calls (uncond, then cond) combined the same way. Goal: two calls /
   one batched call >= 1.6. On a CPU a batch of 2 does about twice the arithmetic of a
   batch of 1, so the gain is the per-call overhead only and may well fall short; on a
   GPU a small UNet is launch-bound and batching nearly halves the time.

Repetitions are interleaved (order rotated each round) so background load hits both
sides alike; figures are medians. The script reports; it never asserts a time.

    python benchmarks/generation.py                    # about a minute on one idle core
    python benchmarks/generation.py --threads 2 --new-tokens 100 --unet-batch 1 4
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from minigpt5.config import GuidanceConfig, MiniGPT5Config
from minigpt5.generate import GenerationConfig, generate
from minigpt5.guidance import guided_prediction
from minigpt5.model import MiniGPT5
from step_breakdown import WORDS, add_size_args, iqr, sized_parts, start_run

CACHE_GOAL = 5.0  # cached / recomputed tokens per second
BATCH_GOAL = 1.6  # two UNet calls / one batched call


def add_generation_args(parser: argparse.ArgumentParser, gen_repeats: int) -> None:
    """Threads, seed, prompt and generation length, repetitions, sizes, guidance scale and device,
    shared by the generation benchmarks."""
    add = parser.add_argument
    # One sequence, one token at a time: matmuls too small for threads to pay, and on shared
    # cores a second thread waits on a busy neighbour (measured here: 10 s vs 0.7 s per run).
    add("--threads", type=int, default=1, help="torch threads; 0 = all cores")
    add("--seed", type=int, default=0)
    add("--prompt-tokens", type=int, default=100, help="prompt length (at least this many tokens)")
    add("--new-tokens", type=int, default=200)
    add("--gen-repeats", type=int, default=gen_repeats, help="timed generations of each kind (median reported)")
    add("--warmup", type=int, default=1)
    add_size_args(parser)
    add("--scale", type=float, default=7.5, help="guidance scale (!= 1: guided, one batched UNet call per step)")
    add("--device", default="cpu")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_generation_args(parser, gen_repeats=3)
    parser.add_argument("--unet-repeats", type=int, default=20)
    parser.add_argument("--unet-batch", type=int, nargs="+", default=[1], help="images per guided step (generation draws 1)")
    return parser.parse_args()


def build_config(args: argparse.Namespace) -> MiniGPT5Config:
    """An LLM and UNet larger than the tiny preset; room for prompt + new tokens."""
    llm, diffusion = sized_parts(args, max_length=args.prompt_tokens + args.new_tokens + 16)
    return MiniGPT5Config(llm=llm, diffusion=diffusion, guidance=GuidanceConfig(scale=args.scale))


def make_prompt(model: MiniGPT5, tokens: int) -> str:
    """Words from the benchmark vocabulary until the prompt has at least ``tokens`` tokens."""
    words: list[str] = []
    while len(model.tokenizer(" ".join(words), add_special_tokens=False).input_ids) < tokens:
        words.append(WORDS[len(words) % len(WORDS)])
    return " ".join(words)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(items: dict[str, Callable[[], object]], warmup: int, repeats: int, device: str) -> dict[str, list[float]]:
    """Round-robin over the items, order rotated each round; seconds per run."""
    names = list(items)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            sync(device)
            start = time.perf_counter()
            items[name]()
            sync(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def bench_cache(model: MiniGPT5, args: argparse.Namespace) -> float:
    prompt = make_prompt(model, args.prompt_tokens)
    settings = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, max_images=0, temperature=0)
    cached_cfg = GenerationConfig(**settings, use_cache=True)
    recompute_cfg = GenerationConfig(**settings, use_cache=False)
    cached, recomputed = generate(model, prompt, None, cached_cfg), generate(model, prompt, None, recompute_cfg)
    same = cached.token_ids == recomputed.token_ids
    times = interleaved(
        {"KV cache": lambda: generate(model, prompt, None, cached_cfg),
         "recompute prefix": lambda: generate(model, prompt, None, recompute_cfg)},
        args.warmup, args.gen_repeats, args.device,
    )
    n = len(cached.token_ids)
    print(f"\n1. generation: prompt {cached.prompt_length} tokens, {n} new tokens, greedy, text only; "
          f"median of {args.gen_repeats} ({args.warmup} warm-up)")
    print(f"   same tokens with and without the cache: {same}")
    row = "   {:<18} {:>10} {:>10} {:>10}"
    print(row.format("", "s/run", "IQR s", "tokens/s"))
    rates = {}
    for name, t in times.items():
        median = statistics.median(t)
        rates[name] = n / median
        print(row.format(name, f"{median:.3f}", f"{iqr(t):.3f}", f"{rates[name]:.1f}"))
    ratio = rates["KV cache"] / rates["recompute prefix"]
    verdict = "MET" if ratio >= CACHE_GOAL else "NOT MET"
    print(f"   ratio KV cache / recompute = {ratio:.2f}x   (goal >= {CACHE_GOAL:.1f}x: {verdict})")
    return ratio


def bench_guidance(model: MiniGPT5, args: argparse.Namespace) -> dict[int, float]:
    size = args.resolution // model.latents.downsample_factor
    channels = model.unet.config.in_channels
    gen = torch.Generator().manual_seed(args.seed)
    scale = args.scale
    timestep = torch.tensor(500, device=args.device)
    ratios, differences = {}, {}
    print(f"\n2. one guided denoising step, scale {scale}: UNet {tuple(args.unet_channels)} x-attn "
          f"{args.cross_attention_dim} on {size}px latents; median of {args.unet_repeats} ({args.warmup} warm-up)")
    row = "   {:<6} {:>14} {:>14} {:>8}"
    print(row.format("batch", "batched ms", "two calls ms", "ratio"))
    for batch in args.unet_batch:
        latents = torch.randn(batch, channels, size, size, generator=gen).to(args.device)  # (N, c, h, w)
        with torch.no_grad():
            features = torch.randn(batch, model.cfg.vokens.num_vokens, model.llm.config.hidden_size, generator=gen)
            cond = model.condition(features.to(args.device)).to(model.unet_dtype)  # (N, Q, C)
            uncond = model.null_condition(batch).to(model.unet_dtype)

        @torch.no_grad()
        def batched() -> torch.Tensor:
            return guided_prediction(model.denoise, latents, timestep, cond, uncond, scale)

        @torch.no_grad()
        def two_calls() -> torch.Tensor:
            pred_uncond = model.denoise(latents, timestep, uncond)
            pred_cond = model.denoise(latents, timestep, cond)
            return pred_uncond + scale * (pred_cond - pred_uncond)

        # Same maths, different kernels (and TF32 convolutions on GPU): close, not equal.
        differences[batch] = float((batched() - two_calls()).abs().max())
        times = interleaved({"batched": batched, "two calls": two_calls}, args.warmup + 2, args.unet_repeats, args.device)
        ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
        ratios[batch] = ms["two calls"] / ms["batched"]
        print(row.format(batch, f"{ms['batched']:.2f}", f"{ms['two calls']:.2f}", f"{ratios[batch]:.2f}x"))
    verdict = "MET" if all(r >= BATCH_GOAL for r in ratios.values()) else "NOT MET"
    print(f"   max |batched - two calls| per batch: {', '.join(f'{d:.1e}' for d in differences.values())}")
    print(f"   ratio two calls / batched (goal >= {BATCH_GOAL:.1f}x): {verdict}")
    return ratios


def start_model(args: argparse.Namespace) -> MiniGPT5:
    """Threads and seed set (``start_run``), the model built in eval mode, and the run described:
    torch, threads, the cores others kept busy, sizes."""
    cores, threads, busy = start_run(args)
    cfg = build_config(args)
    model = MiniGPT5(cfg).eval().to(args.device)
    print(f"torch {torch.__version__} on {args.device}, {threads} thread(s) of {cores} cores; "
          f"{busy:.1f} kept busy by others at start")
    if args.device == "cpu" and busy + threads > cores + 0.3:
        hint = "rerun when idle" if threads == 1 else "try --threads 1, or rerun when idle"
        print(f"note: other processes are using the cores; figures inflate ({hint})")
    print(f"config: LLM {cfg.llm.hidden_size}x{cfg.llm.num_layers} (ff {cfg.llm.intermediate_size}, "
          f"vocab {model.vokens.first_id} + {model.vokens.num_vokens} vokens), UNet {cfg.diffusion.unet_channels} "
          f"x-attn {cfg.diffusion.cross_attention_dim}, {cfg.diffusion.latent_space} space at {cfg.diffusion.resolution}px")
    return model


def main() -> None:
    args = parse_args()
    model = start_model(args)
    cache_ratio = bench_cache(model, args)
    batch_ratios = bench_guidance(model, args)
    summary = ", ".join(f"batch {b}: {r:.2f}x" for b, r in batch_ratios.items())
    print(f"\nsummary: KV cache {cache_ratio:.2f}x faster than recomputing; batched guidance {summary} "
          f"faster than two UNet calls")


if __name__ == "__main__":
    main()
