"""``minigpt5 plan --inference``: the GPU memory of generation under each loading choice
(:mod:`minigpt5.inference_memory` measures it on the meta device).

    minigpt5 plan --inference -c configs/uas.yaml -c configs/mls.yaml -c configs/mls_vist.yaml -c configs/model/paper.yaml
"""

from __future__ import annotations

from minigpt5.config import MiniGPT5Config, stage_of
from minigpt5.inference_memory import inference_plan

GiB = 2**30


def format_inference_plan(cfg: MiniGPT5Config) -> str:
    """The table: one row per choice, its weights on the GPU and the peak of each phase."""
    sizes, phases, peaks = inference_plan(cfg)
    gib = lambda value: f"{value / GiB:.2f}"  # noqa: E731
    row = "{:<32}{:>10}{:>14}{:>10}{:>10}{:>10}{:>8}".format
    lines = [
        f"generation at batch 1, stage {stage_of(cfg)}: a {cfg.llm.max_length}-token context (its KV cache kept), "
        f"{cfg.diffusion.resolution}px images, guidance doubling the UNet's batch",
        f"LLM {cfg.llm.path or 'tiny'}, SD {cfg.diffusion.path or 'tiny'}, vision tower "
        f"{cfg.vision.path or cfg.vision.kind if cfg.vision.kind != 'none' else 'none'}",
        "",
        row("GiB on the GPU", "LLM", "SD + tower", "trained", "prompt", "image", "peak") + "   fits 24 GB",
        row("-" * 30, *["-" * 8] * 2, *["-" * 8] * 3, "-" * 6) + "   ----------",
    ]
    for p in peaks:
        fits = "yes" if p.peak < 24e9 * 0.9 else "no"  # 10% kept free for the CUDA context and the allocator
        lines.append(row(p.choice.label, gib(p.llm), gib(p.resident_parts), gib(p.trained), gib(p.prompt_peak),
                         gib(p.image_peak), gib(p.peak)) + f"   {fits}")
    lines += [
        "",
        f"activations (bf16): prompt {gib(phases.prompt)} (KV cache {gib(phases.cache)}), guided UNet call "
        f"{gib(phases.unet)}, VAE decode {gib(phases.vae)}, vision tower {gib(phases.vision)} GiB",
        "prompt / image: the peak while the LLM reads the context / while an image is drawn and read back. "
        "offload: SD's parts and the tower wait on the CPU (UNet and VAE come to the GPU together per image). "
        "8-bit / 4-bit: bitsandbytes LLM.int8 / NF4 on CUDA (torchao int8 / int4 on the CPU).",
        "not counted: the CUDA context (~0.5-1 GiB), workspaces, fragmentation. Formulas: minigpt5/inference_memory.py.",
    ]
    return "\n".join(lines)
