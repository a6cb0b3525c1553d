"""Padding in stage-2 batches: computed LLM tokens per real token, and training tokens/s, by length grouping.

Stage-2 examples (a story step with its earlier steps, a dialogue turn with its history)
vary widely in length, and a batch pads every row to its longest. ``data.length_grouping``
= P cuts training batches from pools of P batches' worth of examples sorted by length
(:mod:`data_modules.stream`).

1. Computed tokens (batch rows x padded length) per real token over one training epoch of
   each data set, for several P: the synthetic stories and dialogues mixed as the demo's
   stage 2 reads them (its turn choices, ``llm.max_length`` 96), and the real VIST and
   MMDialog samples (``../shared/samples``, converted to shards and read with the official
   turn choices of configs/mls_vist.yaml and mls_mmdialog.yaml but MMDialog's 50-token turn
   limit; a handful of stories and dialogues, resampled to fill the epoch; nothing cut to a
   maximum length). Lengths are in the tiny preset's byte-level tokens, which spell real
   text in about 3x Vicuna's.
   Goal: <= 1.10 with grouping.
2. Stage-2 training throughput on the synthetic mix: the same model (an LLM larger than the
   tiny preset, LoRA on every linear layer, the tiny BLIP-2 reader; sizes are flags) runs
   full training steps (forward, losses, backward, AdamW) on the first batches of an epoch
   without grouping and with it, alternately batch by batch; real tokens per second of
   each, and the ratio. The batches of both cover the same examples (whole pools).

The script reports; it never asserts a time.

    python benchmarks/padding.py                 # a few minutes on 2 cores
    python benchmarks/padding.py --batch 2 --pools 1 8 --steps 16
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from data_modules.convert.mmdialog import convert_mmdialog
from data_modules.convert.vist import convert_vist
from data_modules.interleaved import InterleavedDataModule
from data_modules.synthetic import write_synthetic
from data_modules.turn_choices import TurnChoices
from lit_models.optim import OptimConfig, build_optimizer
from minigpt5.config import LLMConfig, MiniGPT5Config, PeftSettings, VisionConfig
from minigpt5.model import MiniGPT5
from step_breakdown import add_size_args, sized_parts, start_run

GOAL = 1.10
SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
# The turn choices each data set is read with (configs/demo_mls.yaml, mls_vist.yaml, mls_mmdialog.yaml).
DEMO_CHOICES = TurnChoices(story_tasks=["continue"], prompts="none", roles=False)
VIST_CHOICES = TurnChoices(story_tasks=["generate", "continue", "understand"], prompts="official", roles=True)
# Without max_turn_tokens=50: the official limit counts Vicuna's tokens, and the tiny byte-level
# tokenizer spells the sample's first turns in over 200, which would leave no turn.
MMDIALOG_CHOICES = TurnChoices(turn_content="first", bad_turns="stop", history="exchange", roles=True,
                               prompts="official", speakers="both")
UNCUT = 4096  # llm.max_length for the real samples: long enough that no example is cut
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--batch", type=int, default=16, help="examples per batch (the demo's stage 2: 16)")
    add("--pools", type=int, nargs="+", default=[1, 4, 16, 64], help="data.length_grouping values to measure")
    add("--epoch", type=int, default=1600, help="samples per measured epoch")
    add("--steps", type=int, default=16, help="timed training steps per side (a multiple of --train-pool)")
    add("--train-pool", type=int, default=16, help="data.length_grouping of the timed grouped side")
    add("--threads", type=int, default=0, help="torch threads; 0 = all cores")
    add("--seed", type=int, default=0)
    add("--samples", type=Path, default=SAMPLES, help="folder of the real VIST and MMDialog samples")
    add_size_args(parser)
    return parser.parse_args()


def data_sets(root: Path, samples: Path) -> dict[str, tuple[str, TurnChoices, int]]:
    """Name -> (shard spec, turn choices, llm.max_length), written under ``root``."""
    stories = write_synthetic(root / "stories", num=800, val_num=0, size=16, shard_size=400, layout="stories")
    dialogues = write_synthetic(root / "dialogues", num=1200, val_num=0, size=16, shard_size=600, layout="dialogues")
    vist = convert_vist(samples / "VIST" / "val_cleaned.json", samples / "VIST" / "val_image_mapping.json",
                        root / "vist")
    mmdialog = convert_mmdialog(samples / "MMDialog" / "test" / "test_conversations.txt", samples / "MMDialog" / "test",
                                root / "mmdialog")
    return {
        "synthetic stories + dialogues (demo)": (f"{stories.train},{dialogues.train}", DEMO_CHOICES, 96),
        "VIST sample (official choices)": (vist.spec, VIST_CHOICES, UNCUT),
        "MMDialog sample (official choices)": (mmdialog.spec, MMDIALOG_CHOICES, UNCUT),
    }


def module(spec: str, choices: TurnChoices, cfg: MiniGPT5Config, args: argparse.Namespace,
           pool: int) -> InterleavedDataModule:
    dm = InterleavedDataModule(spec, model_config=cfg, choices=choices, targets="all", batch_size=args.batch,
                               num_workers=0, shuffle_buffer=1000, samples_per_epoch=args.epoch, seed=args.seed,
                               length_grouping=pool)
    dm.setup("fit")
    return dm


def computed_per_real(batches: list[dict]) -> float:
    """LLM positions computed (rows x padded length) per real token."""
    return sum(b["attention_mask"].numel() for b in batches) / sum(int(b["attention_mask"].sum()) for b in batches)


def stage2_config(args: argparse.Namespace, max_length: int) -> MiniGPT5Config:
    llm, diffusion = sized_parts(args, max_length)
    return MiniGPT5Config(llm=llm, diffusion=diffusion, vision=VisionConfig(kind="blip2"),
                          peft=PeftSettings(method="lora", lora_target_modules=ALL_LINEAR))


def padding_table(sets: dict[str, tuple[str, TurnChoices, int]], args: argparse.Namespace) -> None:
    print(f"\n1. computed LLM tokens per real token over an epoch of {args.epoch} samples, batch {args.batch} "
          f"(goal <= {GOAL:.2f} with grouping)")
    print("| data set | " + " | ".join(f"grouping {p}" for p in args.pools) + " |")
    print("|---|" + "---|" * len(args.pools))
    for name, (spec, choices, max_length) in sets.items():
        cfg = MiniGPT5Config(llm=LLMConfig(max_length=max_length), vision=VisionConfig(kind="blip2"))
        ratios = [computed_per_real(list(module(spec, choices, cfg, args, pool).train_dataloader()))
                  for pool in args.pools]
        print(f"| {name} | " + " | ".join(f"{r:.3f}" for r in ratios) + " |")


def throughput(spec: str, choices: TurnChoices, args: argparse.Namespace) -> None:
    cfg = stage2_config(args, 96)
    model = MiniGPT5(cfg).train()
    optimizer, schedule = build_optimizer(model, OptimConfig(), (), total_steps=10 * args.steps)
    sides = {}
    for pool in (1, args.train_pool):
        loader = iter(module(spec, choices, cfg, args, pool).train_dataloader())
        sides[pool] = [next(loader) for _ in range(args.steps)]
    seconds: dict[int, list[float]] = {pool: [] for pool in sides}

    def step(batch: dict) -> None:
        out = model(batch)
        out.total(cfg.loss).backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)

    for pool in sides:  # warm-up, untimed
        step(sides[pool][0])
    for k in range(args.steps):
        for pool in (list(sides) if k % 2 == 0 else list(sides)[::-1]):
            torch.manual_seed(args.seed + k)
            start = time.perf_counter()
            step(sides[pool][k])
            seconds[pool].append(time.perf_counter() - start)
    real = {pool: sum(int(b["attention_mask"].sum()) for b in batches) for pool, batches in sides.items()}
    rate = {pool: real[pool] / sum(seconds[pool]) for pool in sides}
    print(f"\n2. stage-2 training on the synthetic mix: LLM {cfg.llm.hidden_size}x{cfg.llm.num_layers}, LoRA on every "
          f"linear layer, UNet {cfg.diffusion.unet_channels}; {args.steps} steps per side, batch {args.batch}")
    print("| length grouping | computed / real tokens | real tokens | median step ms | real tokens/s |")
    print("|---|---|---|---|---|")
    for pool, batches in sides.items():
        print(f"| {pool} | {computed_per_real(batches):.3f} | {real[pool]} | "
              f"{1000 * statistics.median(seconds[pool]):.0f} | {rate[pool]:.0f} |")
    print(f"tokens/s, grouping {args.train_pool} / none: {rate[args.train_pool] / rate[1]:.2f}x")


def main() -> None:
    args = parse_args()
    if args.steps % args.train_pool:
        raise SystemExit(f"--steps {args.steps} must be a multiple of --train-pool {args.train_pool} (whole pools)")
    cores, threads, busy = start_run(args)
    print(f"torch {torch.__version__}, {threads} thread(s) of {cores} cores; {busy:.1f} kept busy by others at start")
    with tempfile.TemporaryDirectory() as tmp:
        sets = data_sets(Path(tmp), args.samples)
        padding_table(sets, args)
        spec, choices, _ = sets["synthetic stories + dialogues (demo)"]
        throughput(spec, choices, args)


if __name__ == "__main__":
    main()
