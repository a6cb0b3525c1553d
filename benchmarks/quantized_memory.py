"""Memory of generation with the LLM quantized (8-bit, 4-bit) or not, as ratios.

A model larger than the tiny preset (LLM 512 wide x 8 layers by default, the benchmarks'
UNet) is written once as a model folder, its LLM as a stand-in folder (``llm.path``), as a
trained model would be. Each choice then runs in a fresh process: ``MiniGPT5.from_pretrained``
with ``quantize`` set (torchao on the CPU, bitsandbytes on CUDA), one story of 64 tokens with
one image, greedy. Reported per choice: the bytes the loaded model holds, and the peak while it
generates, as ``torch.cuda.max_memory_allocated`` counts it: held + the most bytes of tensors
alive at once during generation; and their ratios to the unquantized run. On CUDA both come
from ``torch.cuda``'s allocator. On the CPU, where the process's resident set mixes weights
mapped from the file with freed buffers glibc keeps, held is the bytes of every parameter and
buffer (a quantized tensor's int8 data and scales), and the generation's tensors are followed
by :class:`minigpt5.inference_memory.LiveBytes` (a quantized matmul's own temporaries inside
torchao are not seen). It reports; it never asserts.

    python benchmarks/quantized_memory.py                       # a minute or two on one core
    python benchmarks/quantized_memory.py --llm-hidden 1024 --llm-layers 12 --device cuda
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from minigpt5.builders import build_components
from minigpt5.config import GuidanceConfig, MiniGPT5Config
from minigpt5.generate import GenerationConfig, generate
from minigpt5.inference_memory import LiveBytes
from minigpt5.model import MiniGPT5
from minigpt5.tokenizer import build_tiny_tokenizer
from step_breakdown import add_size_args, sized_parts, start_run

CHOICES = ("none", "8bit", "4bit")
MiB = 2**20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 0 = all cores")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", nargs=2, metavar=("FOLDER", "QUANTIZE"), help=argparse.SUPPRESS)
    add_size_args(parser)
    parser.set_defaults(llm_hidden=512, llm_layers=8, llm_intermediate=1376)
    return parser.parse_args(argv)


def write_model(args: argparse.Namespace, root: Path) -> Path:
    """The seeded model as a folder, its LLM a stand-in folder beside it; returns the model folder."""
    llm, diffusion = sized_parts(args, max_length=args.new_tokens + 32)
    guidance = GuidanceConfig(num_inference_steps=4)
    build_components(MiniGPT5Config(llm=llm, diffusion=diffusion)).llm.save_pretrained(root / "llm")
    build_tiny_tokenizer().save_pretrained(root / "llm")
    stand_in = MiniGPT5Config(llm=replace(llm, path=str(root / "llm")), diffusion=diffusion, guidance=guidance)
    return MiniGPT5(stand_in).save_pretrained(root / "model")


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes of a tensor's data; a quantized tensor subclass's inner tensors (data, scales) summed."""
    if hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def held_bytes(model: nn.Module) -> int:
    return sum(tensor_bytes(t) for t in [*model.parameters(), *model.buffers()])


def child(args: argparse.Namespace) -> dict[str, float]:
    """One choice in this process: memory held after loading, and the peak while generating."""
    folder, quantize = args.child
    cuda = args.device.startswith("cuda")
    model = MiniGPT5.from_pretrained(folder, device=args.device, quantize=None if quantize == "none" else quantize)
    cfg = GenerationConfig(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, temperature=0,
                           force_image=True, seed=args.seed)
    prompt = "a red circle beside a blue square"
    if cuda:
        held = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        result = generate(model, prompt, None, cfg)
        return {"held": held, "peak": torch.cuda.max_memory_allocated(), "images": len(result.images)}
    with LiveBytes() as counter:
        result = generate(model, prompt, None, cfg)
    held = held_bytes(model)
    return {"held": held, "peak": held + counter.peak, "images": len(result.images)}


def main() -> None:
    args = parse_args()
    if args.child:
        torch.set_num_threads(args.threads or 1)
        print(json.dumps(child(args)))
        return
    cores, threads, busy = start_run(args)
    runs = {}
    with tempfile.TemporaryDirectory() as root:
        folder = write_model(args, Path(root))
        for choice in CHOICES:
            command = [sys.executable, __file__, "--child", str(folder), choice, "--device", args.device,
                       "--threads", str(threads), "--seed", str(args.seed), "--new-tokens", str(args.new_tokens),
                       "--llm-hidden", str(args.llm_hidden), "--llm-layers", str(args.llm_layers),
                       "--llm-heads", str(args.llm_heads), "--llm-intermediate", str(args.llm_intermediate)]
            out = subprocess.run(command, capture_output=True, text=True, check=True)
            runs[choice] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"LLM {args.llm_hidden} wide x {args.llm_layers} layers (ff {args.llm_intermediate}), UNet "
          f"{args.unet_channels}, {args.resolution}px; {args.new_tokens} tokens, one image; device {args.device}, "
          f"{threads} thread(s) of {cores} cores ({busy:.1f} busy before the run)")
    print(f"{'LLM':<8}{'held MiB':>10}{'peak MiB':>10}{'held ratio':>12}{'peak ratio':>12}")
    full = runs["none"]
    for choice, run in runs.items():
        print(f"{choice:<8}{run['held'] / MiB:>10.1f}{run['peak'] / MiB:>10.1f}"
              f"{run['held'] / full['held']:>12.2f}{run['peak'] / full['peak']:>12.2f}")


if __name__ == "__main__":
    main()
