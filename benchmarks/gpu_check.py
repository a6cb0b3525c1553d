"""The GPU check: both stages' steps, generation and the sharded strategies, beside ``minigpt5 plan``.

    benchmarks/gpu_check.sh                   # paper sizes, random weights, bf16; one recent NVIDIA GPU
    benchmarks/gpu_check.sh --tiny            # the tiny preset, on the CPU when there is no GPU
    python benchmarks/gpu_check.py --part steps|strategies [--tiny] [--peak-tflops 989] ...

Nothing is downloaded: the models are the configs' own (``configs/model/paper.yaml`` or
``tiny.yaml`` on ``configs/uas.yaml``, stage 2 adding ``mls.yaml`` and ``mls_vist.yaml``),
built from their architecture configs with random weights (``random_weights.py``). Each
part prints markdown tables, a row as soon as it is measured.

``--part steps`` (one process):

- generation on the stage-1 model: text tokens/s (greedy, KV cache) and images/s at the
  config's resolution, guidance, sampler and steps (paper: 512 px, 7.5, pndm, 50), with peak
  memory beside the plan's weights;
- then stage 1's and stage 2's training steps as Lightning runs them (forward under the
  config's precision, bf16 autocast for ``bf16-mixed``; backward; AdamW; schedule), on
  ``--batch`` sequences of ``llm.max_length`` tokens with one target image each (stage 2:
  two earlier pictures per sequence too), activation checkpointing off, then on (every
  LLM decoder layer and UNet block). Per setting: median step time, peak memory
  (``max_memory_allocated``: weights, gradients, optimizer state, activations), the plan's
  prediction for one GPU (its DDP column at world size 1, for the same batch and length),
  the FLOPs of one step (``FlopCounterMode``, counted with checkpointing off: MFU is model
  FLOPs, recomputation not counted) and MFU = FLOPs / step time / the GPU's dense bf16 peak.

``--part strategies``: the stage-1 model's random weights saved in Hugging Face / diffusers
layout, then per strategy overlay (``configs/strategy/``) a ``minigpt5 fit`` of a few
steps, a checkpoint and a resume from it (``strategy_runs.py``), beside the plan's
prediction for that strategy. DeepSpeed and FSDP need CUDA: on the CPU their rows say
they were skipped, and DDP runs the same fit, save and resume.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import signal
import statistics
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from data_modules.synthetic import write_synthetic
from generation import interleaved, make_prompt
from lit_models.optim import OptimConfig, build_optimizer
from lit_models.plan import STRATEGIES, Plan, RunSettings, make_plan, read_settings
from minigpt5.generate import GenerationConfig, generate
from minigpt5.layers import checkpoint_layers, layer_classes, unet_block_classes
from minigpt5.losses import IGNORE_INDEX
from minigpt5.model import MiniGPT5
from minigpt5.sequences import SequenceTooLong, Turn, pad_examples
from minigpt5.templates import Conversation
from random_weights import random_model, random_projection_file, save_frozen_parts
from step_breakdown import WORDS, make_batch, training_step
from strategy_runs import NEEDS_CUDA, ROOT, check_strategy, strategy_overlay

GiB = 2**30
STAGE_FILES = {1: ("uas.yaml",), 2: ("uas.yaml", "mls.yaml", "mls_vist.yaml")}
# Dense bf16 tensor-core peaks from NVIDIA's datasheets (TFLOP/s), by a fragment of the device name;
# the first match wins, so the more specific names come first.
PEAK_BF16_TFLOPS = (("GH200", 989.4), ("H200", 989.4), ("H100 PCIe", 756.0), ("H100 NVL", 835.0),
                    ("H100", 989.4), ("A100", 312.0), ("L40S", 362.0), ("B200", 2250.0))
CAPTION = "a red double decker bus on a city street"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--part", choices=("steps", "strategies"), required=True)
    add("--tiny", action="store_true", help="the tiny preset (configs/model/tiny.yaml) instead of the paper's")
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add("--work", default=str(ROOT / "outputs" / "gpu_check"), help="data, weights and run logs")
    add("--batch", type=int, default=2, help="sequences per step (the paper: 2 per GPU)")
    add("--warmup", type=int, help="untimed steps first (default 2; tiny 1)")
    add("--repeats", type=int, help="timed steps (median reported; default 5; tiny 2)")
    add("--new-tokens", type=int, help="tokens per timed text generation (default 128; tiny 16)")
    add("--images", type=int, default=2, help="timed image generations (median reported)")
    add("--peak-tflops", type=float, help="the device's peak TFLOP/s for MFU (default: looked up by GPU name)")
    add("--strategies", nargs="+", choices=STRATEGIES,
        help="default: deepspeed_zero2 deepspeed_zero3 fsdp (with --tiny, ddp too)")
    add("--strategy-steps", type=int, default=2, help="steps of the first run; the resume runs as many again")
    add("--run-timeout", type=float, default=150, help="seconds each minigpt5 fit may take")
    args = parser.parse_args(argv)
    tiny = args.tiny
    args.preset = "tiny" if tiny else "paper"
    args.warmup = args.warmup if args.warmup is not None else (1 if tiny else 2)
    args.repeats = args.repeats or (2 if tiny else 5)
    args.new_tokens = args.new_tokens or (16 if tiny else 128)
    args.strategies = args.strategies or (list(STRATEGIES) if tiny else list(NEEDS_CUDA))
    if args.strategy_steps < 2:
        parser.error("--strategy-steps must be >= 2 (each run's first step is left out of its time)")
    return args


# ---- the printed table ----

class Table:
    """A markdown table printed a row at a time, so a part cut short keeps what it measured."""

    def __init__(self, title: str, columns: Sequence[str]) -> None:
        self.width = len(columns)
        print(f"\n{title}\n\n| {' | '.join(columns)} |\n|{'---|' * self.width}", flush=True)

    def row(self, *cells: str) -> None:
        print(f"| {' | '.join(cells)} |", flush=True)

    def note(self, name: str, reason: str) -> None:
        """A row with no figures: ``reason`` says why (skipped: ..., FAILED: ...)."""
        self.row(name, reason, *["-"] * (self.width - 2))


def gib(value: float) -> str:
    return f"{value / GiB:.3g}"


def peak_gib(value: Optional[int], device: str) -> str:
    """A measured peak (bytes), or why there is none."""
    return gib(value) if value is not None else f"n/a: no allocator peak on {device}"


def peak_flops(device: str, override: Optional[float]) -> tuple[Optional[float], str]:
    """The device's dense bf16 peak FLOP/s (None when unknown) and where the figure comes from."""
    if override is not None:
        return override * 1e12, f"--peak-tflops {override:g}"
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(device)
        for fragment, tflops in PEAK_BF16_TFLOPS:
            if fragment in name:
                return tflops * 1e12, f"{name}: {tflops:g} TFLOP/s dense bf16 (datasheet)"
        return None, f"{name}: peak unknown (give --peak-tflops)"
    return None, f"{device}: peak unknown (give --peak-tflops)"


# ---- configs and the plan's predictions ----

def config_args(preset: str, stage: int, batch: int, device: str, overlays: Sequence[str] = ()) -> list[str]:
    """``fit``'s ``-c`` files and flags for ``stage`` on one device (``overlays``: more ``-c`` arguments)."""
    files = [*STAGE_FILES[stage], f"model/{preset}.yaml"]
    accelerator = "gpu" if device.startswith("cuda") else "cpu"
    return ([a for f in files for a in ("-c", str(ROOT / "configs" / f))] + list(overlays)
            + ["--trainer.devices=1", f"--trainer.accelerator={accelerator}", f"--data.batch_size={batch}"])


def predicted_bytes(plan: Plan, strategy: str, checkpointing: bool) -> float:
    """What the plan puts on one GPU: model states under ``strategy`` plus the step's activations."""
    activations = plan.activation_peak_on if checkpointing else plan.activations_off.total
    return plan.footprints()[strategy].states + activations


def free(device: str) -> None:
    """Hand what a finished model held back to the device."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def peak_bytes(device: str) -> Optional[int]:
    return torch.cuda.max_memory_allocated(device) if device.startswith("cuda") else None


def describe(settings: RunSettings, batch: dict[str, torch.Tensor]) -> str:
    cfg = settings.model
    images = f", {len(batch['input_pixels'])} context images" if "input_pixels" in batch else ""
    return (f"{settings.precision}, batch {tuple(batch['input_ids'].shape)} tokens, {len(batch['target_pixels'])} "
            f"targets at {cfg.diffusion.resolution} px{images}")


# ---- part 1: steps and generation ----

def pad_to(batch: dict[str, torch.Tensor], length: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Token tensors right-padded to ``length`` (masked, no loss): the plan counts ``llm.max_length`` tokens."""
    extra = length - batch["input_ids"].shape[1]
    fills = {"input_ids": pad_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    return {k: F.pad(v, (0, extra), value=fills[k]) if k in fills else v for k, v in batch.items()}


def caption_batch(model: MiniGPT5, size: int) -> dict[str, torch.Tensor]:
    """Stage 1: ``size`` captions long enough to fill ``llm.max_length`` (the template cuts them), targets, CAP ids."""
    length = model.cfg.llm.max_length
    batch = make_batch(model, argparse.Namespace(batch=size, words=length, seed=0))
    return pad_to(batch, length, model.tokenizer.pad_token_id)


def story_batch(model: MiniGPT5, size: int) -> dict[str, torch.Tensor]:
    """Stage 2: ``size`` stories of two earlier steps with a picture each and a target step with one,
    as long as ``llm.max_length`` keeps whole, padded to it; random pictures."""
    length = model.cfg.llm.max_length
    words = length
    while words:
        text = " ".join(WORDS[i % len(WORDS)] for i in range(words))
        try:
            example = model.template.encode(Conversation("story", Turn(text, 1), [Turn(text, 1)] * 2), length)
            if example.first_context_turn == 0 and not example.truncated:
                break
        except SequenceTooLong:
            pass
        words //= 2
    else:
        raise ValueError(f"llm.max_length {length} cannot hold two context pictures and a target")
    batch = pad_to(pad_examples([example] * size, model.tokenizer.pad_token_id), length, model.tokenizer.pad_token_id)
    gen = torch.Generator().manual_seed(0)
    tower, res = model.vision.image_size, model.cfg.diffusion.resolution
    batch["input_pixels"] = torch.randn(2 * size, 3, tower, tower, generator=gen)  # (M, 3, S, S), tower-normalised
    batch["target_pixels"] = torch.rand(size, 3, res, res, generator=gen) * 2 - 1  # (N, 3, H, W)
    return batch


def measured(table: Table, name: str, measure: Callable[[], list[str]]) -> None:
    """``name``'s row from ``measure()``'s cells, or a FAILED row naming the error; the part goes on."""
    try:
        cells = measure()
    except Exception as err:  # noqa: BLE001 - on a first GPU run any setting may fail; the others still count
        traceback.print_exc()
        message = str(err).strip().splitlines()
        table.note(name, f"FAILED: {type(err).__name__}: {message[0] if message else ''}")
        return
    table.row(name, *cells)


def timed(run: Callable[[], object], warmup: int, repeats: int, device: str) -> float:
    """Median seconds of ``run`` over ``repeats`` calls after ``warmup`` untimed ones, peak memory reset first."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    return statistics.median(interleaved({"run": run}, warmup, repeats, device)["run"])


def stage_table(stage: int, model: MiniGPT5, batch: dict[str, torch.Tensor], settings: RunSettings, plan: Plan,
                args: argparse.Namespace, peak: Optional[float]) -> None:
    """``stage``'s table: activation checkpointing off, then on (applied to the same model)."""
    table = Table(f"stage {stage} training steps: {describe(settings, batch)}; plan GiB: minigpt5 plan for the same "
                  "configs, its DDP column at world size 1",
                  ["run", "step ms", "peak GiB", "plan GiB", "TFLOP/step", "MFU"])
    optimizer, schedule = build_optimizer(model, OptimConfig(), ("mapper.",), total_steps=1000)

    def step() -> None:  # as Lightning runs it: autocast around the forward for bf16-mixed
        with torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=settings.mixed):
            training_step(model, optimizer, schedule, batch)

    with FlopCounterMode(display=False) as counter:  # the first step: model FLOPs, no recomputation
        step()
    flops = counter.get_total_flops()

    def cells(checkpointing: bool) -> list[str]:
        seconds = timed(step, args.warmup, args.repeats, args.device)
        mfu = f"{flops / seconds / peak:.3g}" if peak else "unknown: no peak FLOP/s for this device (--peak-tflops)"
        return [f"{1000 * seconds:.1f}", peak_gib(peak_bytes(args.device), args.device),
                gib(predicted_bytes(plan, "ddp", checkpointing)), f"{flops / 1e12:.3g}", mfu]

    measured(table, f"stage {stage}, checkpointing off", lambda: cells(False))
    checkpoint_layers(model.llm, layer_classes(model.llm))
    checkpoint_layers(model.unet, unet_block_classes(model.unet))
    measured(table, f"stage {stage}, checkpointing on", lambda: cells(True))


def generation_rows(table: Table, model: MiniGPT5, plan: Plan, args: argparse.Namespace) -> None:
    """Text tokens/s and images/s of the stage-1 model, peak memory beside the plan's weights."""
    model.eval()
    weights = plan.footprints()["ddp"]
    planned = gib(weights.frozen_weights + weights.trainable_weights)
    prompt = make_prompt(model, 32)
    text = GenerationConfig(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, max_images=0,
                            temperature=0)
    generate(model, prompt, None, replace(text, max_new_tokens=4, min_new_tokens=4))  # warm-up
    model.generate_images([CAPTION], num_inference_steps=2)

    def rate(run: Callable[[], int], repeats: int, unit: str) -> list[str]:
        """``run`` returns how many tokens or images it made; the rate is per second of its median time."""
        made: list[int] = []
        seconds = timed(lambda: made.append(run()), 0, repeats, args.device)
        return [f"{statistics.median(made) / seconds:.3g} {unit}", peak_gib(peak_bytes(args.device), args.device),
                planned]

    g = model.cfg.guidance
    measured(table, f"text, {args.new_tokens} new tokens, greedy, KV cache",
             lambda: rate(lambda: len(generate(model, prompt, None, text).token_ids), 1, "tokens/s"))
    measured(table, f"one image at {model.cfg.diffusion.resolution} px, {g.sampler} {g.num_inference_steps} steps, "
             f"guidance {g.scale:g}",
             lambda: rate(lambda: len(model.generate_images([CAPTION])), args.images, "images/s"))
    model.train()


def steps_part(args: argparse.Namespace) -> None:
    peak, source = peak_flops(args.device, args.peak_tflops)
    print(f"steps and generation: {args.preset} sizes, random weights, on {args.device}; torch {torch.__version__}; "
          f"MFU peak: {source}")
    torch.manual_seed(0)
    settings = read_settings(config_args(args.preset, 1, args.batch, args.device))
    plan = make_plan(settings)
    model = random_model(settings.model, args.device)
    columns = ["generation", "rate", "peak GiB", "plan GiB"]
    generation_rows(Table("generation, stage-1 model (plan GiB: its weights)", columns), model, plan, args)
    batch = {k: v.to(args.device) for k, v in caption_batch(model, args.batch).items()}
    stage_table(1, model, batch, settings, plan, args, peak)
    del model, batch
    free(args.device)

    stage2 = config_args(args.preset, 2, args.batch, args.device)
    stage2 += random_projection_file(stage2, Path(args.work) / "projection.pth")
    settings = read_settings(stage2)
    model = random_model(settings.model, args.device).train()
    batch = {k: v.to(args.device) for k, v in story_batch(model, args.batch).items()}
    stage_table(2, model, batch, settings, make_plan(settings), args, peak)


# ---- part 2: strategies ----

def strategy_table(args: argparse.Namespace, work: Path) -> None:
    """Save the stage-1 model's random weights and synthetic pairs in ``work``, then a row per strategy."""
    base = config_args(args.preset, 1, args.batch, args.device)
    started = time.perf_counter()
    torch.manual_seed(0)
    model = random_model(read_settings(base).model, args.device)
    weights = save_frozen_parts(model, work / "weights")
    del model
    free(args.device)
    shards = write_synthetic(work / "data", num=64, val_num=0, size=32, seed=0, shard_size=32)
    run_flags = weights + [f"--data.train_shards={shards.train}", "--data.num_workers=1", "--data.shuffle_buffer=16",
                           "--data.samples_per_epoch=100000", "--trainer.accumulate_grad_batches=1",
                           "--model.optim.warmup_steps=1"]
    print(f"strategies: {args.preset} sizes on {args.device}, random weights built and saved in "
          f"{time.perf_counter() - started:.0f} s; each `minigpt5 fit` runs {args.strategy_steps} steps, saves, "
          f"and resumes for {args.strategy_steps} more (logs in {work})")
    table = Table("stage 1 under each strategy (plan = minigpt5 plan for the same configs, world size 1)",
                  ["strategy", "step ms", "peak GiB", "plan GiB", "checkpoint", "resumed"])

    def cells(name: str) -> list[str]:
        run_args = config_args(args.preset, 1, args.batch, args.device, strategy_overlay(name)) + run_flags
        planned = predicted_bytes(make_plan(read_settings(run_args)), name, checkpointing=False)
        check = check_strategy(run_args, work / name, args.strategy_steps, args.run_timeout)
        return [f"{1000 * check.step_seconds:.1f}", peak_gib(check.peak_bytes, args.device), gib(planned),
                f"last.ckpt ({check.checkpoint}) at step {check.saved_at}",
                f"from step {check.resumed_from} to {check.resumed_to}"]

    for name in args.strategies:
        if name in NEEDS_CUDA and not args.device.startswith("cuda"):
            table.note(name, "skipped: needs CUDA (Lightning's DeepSpeed and FSDP strategies refuse the CPU)")
        else:
            measured(table, name, lambda: cells(name))


def strategies_part(args: argparse.Namespace) -> None:
    work = Path(args.work) / "strategies"
    shutil.rmtree(work, ignore_errors=True)
    # The shell's `timeout` stops a part with SIGTERM: leave through the `finally`, which removes the weights.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        strategy_table(args, work)
    finally:
        shutil.rmtree(work / "weights", ignore_errors=True)  # paper size: about 16 GiB


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if not args.tiny and not args.device.startswith("cuda"):
        print("gpu_check: the paper sizes need a CUDA GPU; on the CPU run the tiny preset (--tiny)", file=sys.stderr)
        return 2
    Path(args.work).mkdir(parents=True, exist_ok=True)
    (steps_part if args.part == "steps" else strategies_part)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
