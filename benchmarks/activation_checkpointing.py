"""Activation checkpointing off vs on: step time and memory of one training step, one run.

A stage-1 step (``model(batch)`` -> total loss -> backward; the optimizer step is the
same either way and left out) on a model larger than the tiny preset: LLM 512 wide x 8
layers, 256-token sequences, UNet (64, 128, 256) with cross-attention 256 on the tiny
VAE's 32 px latents of 64 px images; all sizes are flags. "on" checkpoints every LLM
decoder layer and every UNet block (``llm/diffusion.gradient_checkpointing``).

Three figures per setting:

1. step time: off and on interleaved (order swapped each round) in this process, medians;
2. saved for backward: bytes of the tensors autograd keeps from the forward for the
   backward, each storage once, parameters left out: exactly what checkpointing trades
   for recomputation; beside it, the same count made on the meta device by
   ``minigpt5.memory.measure_activations`` (what ``minigpt5 plan`` reports), as a check;
3. peak memory of the step: on a GPU ``torch.cuda.max_memory_allocated`` above the memory
   held before the step; on the CPU, the peak resident set (VmHWM) above the resident set
   before the step, in a fresh process per setting: after a warm-up step, freed memory is
   handed back to the OS (``malloc_trim``) and the high-water mark reset through
   ``/proc/self/clear_refs``. RSS includes the allocator's caching and
   kernels' temporaries, so it is the figure a machine sees, and a noisier one.

The script reports; it never asserts a time.

    python benchmarks/activation_checkpointing.py            # ~2 min on one core
    python benchmarks/activation_checkpointing.py --device cuda --batch 8
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from minigpt5.config import MiniGPT5Config
from minigpt5.memory import measure_activations, storage_bytes_saved
from minigpt5.model import MiniGPT5
from step_breakdown import add_size_args, build_config, iqr, make_batch, start_run

MiB = 2**20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--batch", type=int, default=4, help="captions (= target images) per step")
    add("--words", type=int, default=250, help="words per caption (about one token each)")
    add("--max-length", type=int, default=272, help="llm.max_length (the sequence is ~words + 9 tokens)")
    add("--repeats", type=int, default=4, help="timed steps per setting (median reported)")
    add("--warmup", type=int, default=1)
    # On shared cores two threads wait on a busy neighbour: measured here, a step took 39 s
    # with 2 threads against 4 s with 1, and the ratio drowned in the noise.
    add("--threads", type=int, default=1, help="torch threads; 0 = all cores")
    add("--seed", type=int, default=0)
    add("--device", default="cpu")
    add("--mapper-width", type=int, default=256)
    add("--mapper-layers", type=int, default=2)
    add("--mapper-ff", type=int, default=1024)
    add_size_args(parser)
    parser.set_defaults(llm_hidden=512, llm_layers=8, llm_heads=8, llm_intermediate=1376,
                        resolution=64, unet_channels=[64, 128, 256], cross_attention_dim=256)
    add("--worker", choices=("off", "on"), help=argparse.SUPPRESS)  # one setting's RSS, in a fresh process
    return parser.parse_args(argv)


def build(args: argparse.Namespace, checkpointing: bool) -> tuple[MiniGPT5, dict[str, torch.Tensor]]:
    cfg: MiniGPT5Config = build_config(args)
    cfg = replace(cfg, llm=replace(cfg.llm, gradient_checkpointing=checkpointing),
                  diffusion=replace(cfg.diffusion, gradient_checkpointing=checkpointing))
    torch.manual_seed(args.seed)  # same mapper initialisation for both
    model = MiniGPT5(cfg).train().to(args.device)
    batch = {k: v.to(args.device) for k, v in make_batch(model, args).items()}
    return model, batch


def step(model: MiniGPT5, batch: dict[str, torch.Tensor], seed: int) -> None:
    torch.manual_seed(seed)
    model(batch).total(model.cfg.loss).backward()
    model.zero_grad(set_to_none=True)


def saved_bytes(model: MiniGPT5, batch: dict[str, torch.Tensor], seed: int) -> int:
    """Bytes autograd saves for the backward in one forward, each storage once, no parameters."""
    torch.manual_seed(seed)
    losses = []
    saved = storage_bytes_saved(model, lambda: losses.append(model(batch).total(model.cfg.loss)))
    losses[0].backward()
    model.zero_grad(set_to_none=True)
    return saved


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_step_bytes(args: argparse.Namespace, checkpointing: bool) -> int:
    """Peak memory of one step above what was held before it (see the module docstring)."""
    model, batch = build(args, checkpointing)
    step(model, batch, args.seed)  # warm-up: lazy allocations, caches
    if args.device.startswith("cuda"):
        sync(args.device)
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(model, batch, args.seed)
        sync(args.device)
        return torch.cuda.max_memory_allocated() - before
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand the warm-up's freed memory back to the OS
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set (VmHWM) to the current one
    before = status_kib("VmRSS")
    step(model, batch, args.seed)
    return (status_kib("VmHWM") - before) * 1024


def peak_in_fresh_process(args: argparse.Namespace, setting: str) -> int:
    argv = [a for a in sys.argv[1:] if not a.startswith("--worker")]
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", setting],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak"]


def main() -> None:
    args = parse_args()
    cores, threads, busy = start_run(args)
    if args.worker:
        print(json.dumps({"peak": peak_step_bytes(args, args.worker == "on")}))
        return
    models = {name: build(args, name == "on") for name in ("off", "on")}
    model, batch = models["off"]
    cfg = model.cfg
    print(f"torch {torch.__version__}, {args.device}, {threads} thread(s) of {cores} cores; "
          f"{busy:.1f} kept busy by others at start")
    print(f"config: LLM {cfg.llm.hidden_size}x{cfg.llm.num_layers} (ff {cfg.llm.intermediate_size}), "
          f"UNet {cfg.diffusion.unet_channels} x-attn {cfg.diffusion.cross_attention_dim} at "
          f"{cfg.diffusion.resolution // model.latents.downsample_factor}px latents; batch {args.batch}, "
          f"input_ids {tuple(batch['input_ids'].shape)}")

    saved = {name: saved_bytes(m, b, args.seed) for name, (m, b) in models.items()}
    # The same count on the meta device, as `minigpt5 plan` makes it (no tensors allocated).
    estimate = {name: measure_activations(MiniGPT5.on_meta(m.cfg), args.batch, batch["input_ids"].shape[1]).total
                for name, (m, _) in models.items()}
    times: dict[str, list[float]] = {"off": [], "on": []}
    for r in range(args.warmup + args.repeats):
        for name in (("off", "on") if r % 2 == 0 else ("on", "off")):
            m, b = models[name]
            sync(args.device)
            start = time.perf_counter()
            step(m, b, args.seed + r)
            sync(args.device)
            if r >= args.warmup:
                times[name].append(time.perf_counter() - start)
    del models, model, batch
    peaks = {name: peak_in_fresh_process(args, name) for name in ("off", "on")}

    ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
    spread = {name: 1000 * iqr(t) for name, t in times.items()}
    row = "{:<14} {:>10} {:>8} {:>19} {:>16} {:>22}"
    print(f"\nmedian of {args.repeats} interleaved steps ({args.warmup} warm-up); IQR = p75 - p25")
    print(row.format("checkpointing", "step ms", "IQR", "saved for bwd MiB", "meta count MiB",
                     "step peak MiB" + (" (RSS)" if args.device == "cpu" else "")))
    for name in ("off", "on"):
        print(row.format(name, f"{ms[name]:.0f}", f"{spread[name]:.0f}", f"{saved[name] / MiB:.1f}",
                         f"{estimate[name] / MiB:.1f}", f"{peaks[name] / MiB:.1f}"))
    print(f"\nstep time on / off       = {ms['on'] / ms['off']:.2f}")
    print(f"saved for backward on / off = {saved['on'] / saved['off']:.3f}")
    print(f"step peak memory on / off   = {peaks['on'] / max(1, peaks['off']):.3f}")


if __name__ == "__main__":
    main()
