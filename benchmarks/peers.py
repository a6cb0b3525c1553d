"""Side by side with the peers' own code: Hugging Face ``generate`` and diffusers' SD pipeline.

1. Text: tokens per second of ``minigpt5.generate`` (``generate_from_ids``, text only:
   ``max_images=0``) against ``model.llm.generate`` of Hugging Face on the same LLM
   (``generation.py``'s, 256 wide x 4 layers), the same encoded ~100-token prompt, greedy,
   200 new tokens (``min_new_tokens`` = ``max_new_tokens``, with the same ending tokens
   masked: ``ending_ids``), KV cache on for both. Both must write the same tokens: the script
   checks it before timing and stops, naming the first difference, if they do not.
   Goal: ours / HF >= 0.95.
2. Images: ``MiniGPT5.images_from_condition`` against diffusers' ``StableDiffusionPipeline``
   assembled from the same UNet, VAE, SD text encoder and tokenizer, with a scheduler
   ``build_sampler`` makes from the same training-scheduler config (``--sampler``, pndm by
   default: SD 2.1 base's own scheduler, the paper's sampler, and one that reads
   ``steps_offset``), the same steps and guidance scale, and a generator of the same seed, so
   the same initial latents. The conditioning is what generation draws with: the mapper's
   output for random voken features (``prompt_embeds``) and for zeros
   (``negative_prompt_embeds``). The images (in [0, 1], as the pipeline returns them) must
   agree within ``IMAGE_TOLERANCE``; the script checks it before timing and stops if not.
   The pipeline rewrites a scheduler config whose ``steps_offset`` is not 1 (with a
   deprecation warning) or whose ``clip_sample`` is on; the script prints any rewrite it made.
   Goal: ours / pipeline >= 1.0.
3. Attention: for one forward of each part, how many attention layers ran and how many
   calls reached PyTorch's ``scaled_dot_product_attention`` (SDPA), counted by the profiler.
   The LLM uses transformers' ``sdpa`` attention (its default; the project sets none), the
   UNet and VAE diffusers' ``AttnProcessor2_0`` (SDPA; its default). The mapper's
   ``nn.MultiheadAttention`` goes through ``F.multi_head_attention_forward``, which calls
   SDPA, in training; under ``no_grad`` in eval its self-attentions take PyTorch's native
   fast path (``_native_multi_head_attention``), which calls SDPA's fused kernels on CUDA
   when the head size is a multiple of 8 (tiny 64 / 4 = 16, paper 1024 / 8 = 128) and its own
   matmul + softmax on the CPU. Left as PyTorch chooses: the only switch is process-wide
   (``torch.backends.mha.set_fastpath_enabled(False)``), and on this CPU it moved the whole
   mapper's eval forward by 1-3% either way (one interleaved run, medians: tiny 0.71 ms fast
   path vs 0.70 ms SDPA; paper sizes, 4 + 4 layers, 176 vs 181 ms), outputs within 2.3e-6.

Repetitions are interleaved (order rotated each round) so background load hits both sides
alike; figures are medians. The script reports; it never asserts a time.

    python benchmarks/peers.py                         # about a minute on one idle core
    python benchmarks/peers.py --sampler ddim --steps 25 --scale 2
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from typing import Callable, Optional

import torch
from diffusers import StableDiffusionPipeline
from torch import nn
from torch.profiler import profile

from generation import add_generation_args, interleaved, make_prompt, start_model
from minigpt5.builders import VAELatents
from minigpt5.generate import GenerationConfig, encode_prompt, ending_ids, generate_from_ids
from minigpt5.guidance import SAMPLERS, build_sampler
from minigpt5.model import MiniGPT5
from step_breakdown import iqr

TEXT_GOAL = 0.95  # ours / HF generate, tokens per second
IMAGE_GOAL = 1.0  # ours / StableDiffusionPipeline, images per second
IMAGE_TOLERANCE = 1e-6  # max |ours - pipeline| on images in [0, 1]: the same operations in the same order
SCHEDULER_KEYS = ("steps_offset", "clip_sample", "set_alpha_to_one")  # what SD's pipeline checks or SD sets


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_generation_args(parser, gen_repeats=5)
    add = parser.add_argument
    add("--image-repeats", type=int, default=5, help="timed samplings of each kind (median reported)")
    add("--sampler", choices=tuple(SAMPLERS), default="pndm")
    add("--steps", type=int, default=50, help="denoising steps (StableDiffusionPipeline's default)")
    add("--images", type=int, default=1, help="images per sampling (generation draws 1)")
    return parser.parse_args()


# ---- text ----

def text_runs(model: MiniGPT5, prompt_ids: list[int], new_tokens: int) -> dict[str, Callable[[], list[int]]]:
    """The two generators of exactly ``new_tokens`` greedy tokens after ``prompt_ids`` -> the ids written."""
    cfg = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, max_images=0, temperature=0)
    device = model.mapper.queries.device
    input_ids = torch.tensor([prompt_ids], device=device)  # (1, T)

    def ours() -> list[int]:
        return generate_from_ids(model, prompt_ids, None, cfg).token_ids

    @torch.no_grad()
    def hugging_face() -> list[int]:
        out = model.llm.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
            min_new_tokens=new_tokens, do_sample=False, use_cache=True, eos_token_id=ending_ids(model),
            pad_token_id=model.tokenizer.pad_token_id,
        )  # (1, T + new_tokens)
        return out[0, len(prompt_ids):].tolist()

    return {"minigpt5.generate": ours, "HF generate": hugging_face}


def first_difference(a: list[int], b: list[int]) -> Optional[int]:
    """The first position where two token lists differ (a length difference counts); None if equal."""
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def bench_text(model: MiniGPT5, args: argparse.Namespace) -> float:
    prompt_ids, _ = encode_prompt(model, make_prompt(model, args.prompt_tokens))
    runs = text_runs(model, prompt_ids, args.new_tokens)
    ours, theirs = (run() for run in runs.values())
    where = first_difference(ours, theirs)
    if where is not None:
        raise SystemExit(f"the two wrote different tokens from position {where}: ours {ours[where:where + 5]}, "
                         f"HF {theirs[where:where + 5]}; a speed ratio would compare different work")
    times = interleaved(runs, args.warmup, args.gen_repeats, args.device)
    print(f"\n1. text: prompt {len(prompt_ids)} tokens, {len(ours)} new tokens, greedy, KV cache; "
          f"median of {args.gen_repeats} ({args.warmup} warm-up)")
    print("   same tokens: True")
    rates = report(times, len(ours), "tokens/s")
    ratio = rates["minigpt5.generate"] / rates["HF generate"]
    print(f"   ratio minigpt5.generate / HF generate = {ratio:.3f}x   (goal >= {TEXT_GOAL}x: {verdict(ratio, TEXT_GOAL)})")
    return ratio


# ---- images ----

def build_pipeline(model: MiniGPT5, sampler: str) -> tuple[StableDiffusionPipeline, dict[str, tuple]]:
    """diffusers' SD pipeline from the model's frozen parts and the ``sampler`` scheduler built from
    its training scheduler's config -> the pipeline, and each config value the pipeline rewrote
    (key -> (ours, pipeline's))."""
    if not isinstance(model.latents, VAELatents):
        raise ValueError("StableDiffusionPipeline decodes with a VAE: build the model with latent_space vae")
    scheduler = build_sampler(sampler, model.scheduler.config)
    ours = {key: scheduler.config.get(key) for key in SCHEDULER_KEYS}
    with warnings.catch_warnings():  # its deprecation note on steps_offset; the rewrite is reported instead
        warnings.simplefilter("ignore", FutureWarning)
        pipeline = StableDiffusionPipeline(
            vae=model.latents.vae, text_encoder=model.text_encoder, tokenizer=model.sd_tokenizer, unet=model.unet,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    pipeline.set_progress_bar_config(disable=True)
    rewritten = {key: (value, pipeline.scheduler.config.get(key)) for key, value in ours.items()
                 if pipeline.scheduler.config.get(key) != value}
    return pipeline, rewritten


def image_runs(
    model: MiniGPT5, pipeline: StableDiffusionPipeline, cond: torch.Tensor, uncond: torch.Tensor, *,
    sampler: str, steps: int, scale: float, seed: int,
) -> dict[str, Callable[[], torch.Tensor]]:
    """The two samplers of images from conditioning (N, Q, C) and (N, Q, C) -> images (N, 3, H, W) in [0, 1]."""
    device = cond.device
    size = model.cfg.diffusion.resolution

    def ours() -> torch.Tensor:
        generator = torch.Generator(device=device).manual_seed(seed)
        images = model.images_from_condition(cond, uncond, scale=scale, num_inference_steps=steps,
                                             generator=generator, sampler=sampler)  # [-1, 1]
        return images / 2 + 0.5

    def diffusers_pipeline() -> torch.Tensor:
        generator = torch.Generator(device=device).manual_seed(seed)
        return pipeline(prompt_embeds=cond, negative_prompt_embeds=uncond, guidance_scale=scale,
                        num_inference_steps=steps, height=size, width=size, generator=generator,
                        output_type="pt").images

    return {"images_from_condition": ours, "SD pipeline": diffusers_pipeline}


def mapper_conditioning(model: MiniGPT5, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What generation draws with: the mapper's output for random voken features, and for zeros -> (N, Q, C) each."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(count, model.cfg.vokens.num_vokens, model.llm.config.hidden_size, generator=generator)
    with torch.no_grad():
        return model.condition(features.to(model.mapper.queries.device)), model.null_condition(count)


def bench_images(
    model: MiniGPT5, pipeline: StableDiffusionPipeline, rewritten: dict[str, tuple], args: argparse.Namespace
) -> tuple[float, float]:
    cond, uncond = mapper_conditioning(model, args.images, args.seed)
    runs = image_runs(model, pipeline, cond, uncond, sampler=args.sampler, steps=args.steps, scale=args.scale,
                      seed=args.seed)
    ours, theirs = (run() for run in runs.values())
    difference = float((ours - theirs).abs().max())
    print(f"\n2. images: {args.images} at {model.cfg.diffusion.resolution}px, {args.sampler} {args.steps} steps, "
          f"guidance {args.scale}; median of {args.image_repeats} ({args.warmup} warm-up)")
    print("   scheduler config rewritten by the pipeline: "
          + (", ".join(f"{k} {a} -> {b}" for k, (a, b) in rewritten.items()) or "nothing"))
    print(f"   max |ours - pipeline| on [0, 1] images: {difference:.2e} (tolerance {IMAGE_TOLERANCE:.0e})")
    if difference > IMAGE_TOLERANCE:
        raise SystemExit("the two drew different images; a speed ratio would compare different work")
    times = interleaved(runs, args.warmup, args.image_repeats, args.device)
    rates = report(times, args.images, "images/s")
    ratio = rates["images_from_condition"] / rates["SD pipeline"]
    print(f"   ratio images_from_condition / SD pipeline = {ratio:.3f}x   "
          f"(goal >= {IMAGE_GOAL}x: {verdict(ratio, IMAGE_GOAL)})")
    return ratio, difference


# ---- attention ----

def attention_calls(run: Callable[[], object], module: nn.Module) -> tuple[int, int, int]:
    """One ``run()`` -> (calls of ``module``'s attention layers, calls of PyTorch's SDPA, calls of
    its native multi-head attention fast path). An attention layer is a submodule whose class
    name ends in ``Attention`` (LlamaAttention, MultiheadAttention, diffusers' Attention, ...)."""
    layers = [m for m in module.modules() if type(m).__name__.endswith("Attention")]
    calls = [0]

    def count(*_: object) -> None:
        calls[0] += 1

    hooks = [layer.register_forward_hook(count) for layer in layers]
    try:
        with profile() as prof:
            run()
    finally:
        for hook in hooks:
            hook.remove()
    events = {event.key: event.count for event in prof.key_averages()}
    return calls[0], events.get("aten::scaled_dot_product_attention", 0), events.get("aten::_native_multi_head_attention", 0)


def attention_report(model: MiniGPT5, prompt_ids: list[int]) -> dict[str, tuple[int, int, int]]:
    """:func:`attention_calls` of one forward of the LLM, the mapper (eval and training), the UNet and the VAE decoder."""
    device = model.mapper.queries.device
    ids = torch.tensor([prompt_ids], device=device)  # (1, T)
    cond, uncond = mapper_conditioning(model, 1, 0)
    size = model.cfg.diffusion.resolution // model.latents.downsample_factor
    latents = torch.randn(2, model.unet.config.in_channels, size, size, device=device)  # (2, c, h, w)
    features = torch.randn(2, model.cfg.vokens.num_vokens, model.llm.config.hidden_size, device=device)
    timestep = torch.tensor(500, device=device)
    counts = {}
    with torch.no_grad():
        counts["LLM"] = attention_calls(lambda: model.llm(input_ids=ids), model.llm)
        counts["mapper, eval"] = attention_calls(lambda: model.mapper(features), model.mapper)
        counts["UNet"] = attention_calls(lambda: model.denoise(latents, timestep, torch.cat([uncond, cond])), model.unet)
        counts["VAE decoder"] = attention_calls(lambda: model.latents.decode(latents), model.latents)
    model.mapper.train()
    try:
        counts["mapper, training"] = attention_calls(lambda: model.mapper(features), model.mapper)
    finally:
        model.eval()
    return counts


def print_attention(model: MiniGPT5, prompt_ids: list[int]) -> None:
    print("\n3. attention: one forward of each part; calls of its attention layers, of SDPA, of the native MHA path")
    print(f"   LLM attn_implementation: {model.llm.config._attn_implementation}; UNet processors: "
          f"{sorted({type(p).__name__ for p in model.unet.attn_processors.values()})}")
    row = "   {:<18} {:>12} {:>6} {:>11}"
    print(row.format("", "attn layers", "SDPA", "native MHA"))
    for name, (layers, sdpa, native) in attention_report(model, prompt_ids).items():
        print(row.format(name, layers, sdpa, native))


# ---- output ----

def report(times: dict[str, list[float]], items: int, unit: str) -> dict[str, float]:
    """Print each side's median seconds, IQR and rate; return the rates."""
    row = "   {:<22} {:>8} {:>8} {:>10}"
    print(row.format("", "s/run", "IQR s", unit))
    rates = {}
    for name, t in times.items():
        median = statistics.median(t)
        rates[name] = items / median
        print(row.format(name, f"{median:.3f}", f"{iqr(t):.3f}", f"{rates[name]:.4g}"))
    return rates


def verdict(ratio: float, goal: float) -> str:
    return "MET" if ratio >= goal else "NOT MET"


def main() -> None:
    args = parse_args()
    model = start_model(args)
    pipeline, rewritten = build_pipeline(model, args.sampler)
    text = bench_text(model, args)
    images, difference = bench_images(model, pipeline, rewritten, args)
    print_attention(model, encode_prompt(model, make_prompt(model, 16))[0])
    print(f"\nsummary: text {text:.3f}x HF generate (goal {TEXT_GOAL}), images {images:.3f}x the SD pipeline "
          f"(goal {IMAGE_GOAL}), images equal within {difference:.1e}")


if __name__ == "__main__":
    main()
