"""Is one training step no slower than its parts? Full step / (LLM + mapper + UNet), one run.

A stage-1 (UAS) step on a model larger than the tiny preset is timed whole, exactly as
``MiniGPT5Module.training_step`` and the optimizer run it::

    model(batch) -> out.total(cfg.loss) -> backward -> AdamW step + LR schedule -> zero_grad

(Lightning's logging left out), and its three heavy parts are timed in isolation on the
same inputs:

1. LLM forward + backward: ``llm_forward``, text loss plus a surrogate on the voken
   features (their sum), backward (the LLM is frozen in stage 1, but the backward still
   runs through every layer to reach the trainable voken input rows);
2. mapper forward + backward on (N, 8, D) features that require grad, as in the step;
3. UNet forward + backward: ``ldm_loss`` through ``model.denoise`` with a conditioning
   tensor that requires grad (the UNet is frozen; grads flow to the conditioning only).

The full step runs four ways, on four forms of the same batch: targets as pixels that the
VAE encodes in the step or as cached VAE moments (``minigpt5 data encode-latents``), and
CAP targets from the SD text encoder in the step or cached (``--captions``). Targets live
in the latent space of a tiny random ``AutoencoderKL`` by default (``--latent-space vae``,
as real SD training does; the UNet then sees 16 px latents of 32 px images).

The goal is full / (1 + 2 + 3) <= 1.05. The remainder is measured too, so the table
explains the gap: latent encode (VAE, no grad) or sampling from cached moments, the text
encoder on the captions (CAP target, no grad), CAP loss, CFG dropout, and the optimizer
step + zero_grad. The mapper's first self-attention over its learnable queries runs once
per batch (``FeatureMapper``); the mapper as ``nn.Transformer`` runs it, once per sample,
is timed beside it.

Repetitions of every item are interleaved (round-robin, order rotated each round) so
background load hits all of them alike; each item's figure is the median. Every
repetition of every item is seeded with the same per-round seed, so noise, timesteps
and dropout draws match across items. The script reports; it never asserts a time.

    python benchmarks/step_breakdown.py            # defaults: ~40 s on 2 idle cores
    python benchmarks/step_breakdown.py --repeats 20 --threads 1 --latent-space pixel
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch

from lit_models.optim import OptimConfig, build_optimizer
from minigpt5.builders import VAELatents
from minigpt5.config import DiffusionConfig, LLMConfig, MapperConfig, MiniGPT5Config
from minigpt5.guidance import drop_features
from minigpt5.losses import cap_loss, ldm_loss, text_loss
from minigpt5.model import MiniGPT5
from minigpt5.sequences import tokenize_for_text_encoder

GOAL = 1.05  # full step / sum of parts
WORDS = (
    "a red blue green small large circle square triangle on the white background of "
    "in front left right with tree house dog cat sky street man woman city park day night"
).split()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--batch", type=int, default=8, help="captions (= target images) per step")
    add("--words", type=int, default=10, help="words per caption")
    add("--repeats", type=int, default=20, help="timed repetitions of each item (median reported)")
    add("--warmup", type=int, default=3, help="untimed repetitions of each item first")
    add("--threads", type=int, default=0, help="torch threads; 0 = all cores")
    add("--clock", choices=tuple(CLOCKS), default="wall",
        help="wall: elapsed time; cpu: this process's CPU time, which with --threads 1 is the work done "
             "whatever other jobs take of the cores")
    add("--seed", type=int, default=0, help="base seed; round r of every item uses seed + r")
    add("--max-length", type=int, default=64)
    add("--mapper-width", type=int, default=256)
    add("--mapper-layers", type=int, default=2, help="encoder layers = decoder layers")
    add("--mapper-ff", type=int, default=1024)
    add_size_args(parser)
    return parser.parse_args()


def add_size_args(parser: argparse.ArgumentParser) -> None:
    """LLM and UNet sizes larger than the tiny preset, shared by the benchmarks."""
    add = parser.add_argument
    add("--llm-hidden", type=int, default=256)
    add("--llm-layers", type=int, default=4)
    add("--llm-heads", type=int, default=8)
    add("--llm-intermediate", type=int, default=688)
    add("--resolution", type=int, default=32)
    add("--latent-space", choices=("vae", "pixel"), default="vae",
        help="vae: the tiny AutoencoderKL (/2), as real SD training; pixel: diffuse pixels")
    add("--unet-channels", type=int, nargs="+", default=[64, 128])
    add("--cross-attention-dim", type=int, default=128)


def sized_parts(args: argparse.Namespace, max_length: int) -> tuple[LLMConfig, DiffusionConfig]:
    """The LLM and diffusion configs of ``add_size_args``' flags."""
    llm = LLMConfig(hidden_size=args.llm_hidden, num_layers=args.llm_layers, num_heads=args.llm_heads,
                    intermediate_size=args.llm_intermediate, max_length=max_length)
    diffusion = DiffusionConfig(resolution=args.resolution, latent_space=args.latent_space,
                                unet_channels=tuple(args.unet_channels), cross_attention_dim=args.cross_attention_dim)
    return llm, diffusion


def build_config(args: argparse.Namespace) -> MiniGPT5Config:
    """A stage-1 config larger than the tiny preset (losses and guidance at their defaults)."""
    llm, diffusion = sized_parts(args, args.max_length)
    mapper = MapperConfig(width=args.mapper_width, num_encoder_layers=args.mapper_layers,
                          num_decoder_layers=args.mapper_layers, num_heads=8, ff_size=args.mapper_ff)
    return MiniGPT5Config(llm=llm, mapper=mapper, diffusion=diffusion)


def make_batch(model: MiniGPT5, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """Stage-1 batch: captions + vokens, random target pixels in [-1, 1], caption ids for CAP."""
    rng = random.Random(args.seed)
    captions = [" ".join(rng.choice(WORDS) for _ in range(args.words)) for _ in range(args.batch)]
    batch = model.caption_batch(captions)
    gen = torch.Generator().manual_seed(args.seed)
    res = model.cfg.diffusion.resolution
    batch["target_pixels"] = torch.rand(args.batch, 3, res, res, generator=gen) * 2 - 1  # (N, 3, H, W)
    batch["caption_ids"] = tokenize_for_text_encoder(
        model.sd_tokenizer, captions, model.cfg.diffusion.text_max_length
    )  # (N, L)
    return batch


def cached_forms(model: MiniGPT5, batch: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """``batch`` as the step reads it with neither cache, the latent cache, the text-encoder cache, or both
    (pixel space has no latent cache)."""
    embeddings = model.encode_captions(batch["caption_ids"])  # (N, L, C)
    forms = {"no cache": batch, "text-encoder cache": dict(batch, caption_embeddings=embeddings)}
    if isinstance(model.latents, VAELatents):
        moments = model.latents.moments(batch["target_pixels"]).detach()  # (N, 2c, h, w)
        forms["latent cache"] = {k: v for k, v in batch.items() if k != "target_pixels"}
        forms["latent cache"]["target_latent_moments"] = moments
        forms["both caches"] = dict(forms["latent cache"], caption_embeddings=embeddings)
    return {name: forms[name] for name in FORM_REMAINDER if name in forms}  # printed in this order


def training_step(model: MiniGPT5, optimizer: torch.optim.Optimizer, schedule, batch: dict[str, torch.Tensor]) -> None:
    """One step as ``MiniGPT5Module.training_step`` and the optimizer run it (logging left out)."""
    total = model(batch).total(model.cfg.loss)
    bool(torch.isfinite(total))  # training_step's non-finite check (a host sync on GPU)
    total.backward()
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)


@dataclass
class Item:
    name: str
    run: Callable[[], None]  # the timed work
    reset: Callable[[], None] = lambda: None  # untimed, after each run (e.g. drop grads)
    prepare: Callable[[], None] = lambda: None  # untimed, before each run
    page_faults: list[int] = field(default_factory=list)  # minor faults per timed run: freed memory touched again


# What each form of the batch still runs in the step besides the three parts.
COMMON_REMAINDER = ["CAP loss fwd+bwd", "CFG dropout", "AdamW + schedule + zero_grad"]
FORM_REMAINDER = {
    "no cache": ["latent encode (no grad)", "CAP targets: text encoder"],
    "latent cache": ["latents from cached moments", "CAP targets: text encoder"],
    "text-encoder cache": ["latent encode (no grad)", "CAP targets: cached"],
    "both caches": ["latents from cached moments", "CAP targets: cached"],
}
PARTS = ["LLM fwd+bwd", "mapper fwd+bwd", "UNet fwd+bwd (ldm_loss)"]
PER_SAMPLE_MAPPER = "mapper fwd+bwd, queries per sample"


def build_items(model: MiniGPT5, forms: dict[str, dict[str, torch.Tensor]]) -> list[Item]:
    """The full step on each form of the batch, its three parts and the remainder's pieces, all on the same inputs."""
    cfg = model.cfg
    batch = forms["no cache"]
    optimizer, schedule = build_optimizer(model, OptimConfig(), ("mapper.",), total_steps=1000)
    trainable = [p for p in model.parameters() if p.requires_grad]

    def drop_grads() -> None:
        model.zero_grad(set_to_none=True)

    # Fixed inputs of the isolated parts, shaped as in the full step.
    with torch.no_grad():
        _, hidden = model.llm_forward(batch["input_ids"], batch["attention_mask"])
        features0 = model.voken_features(batch["input_ids"], hidden)  # (N, n, D)
        cond0 = model.condition(features0)  # (N, Q, C)
    latents = model.encode_images(batch["target_pixels"])  # (N, c, h, w)
    grad_cond = torch.randn_like(cond0)  # stands in for dL/dcond from the UNet and CAP losses
    fake_grads = [torch.randn_like(p) * 1e-3 for p in trainable]

    def full(form: dict[str, torch.Tensor]) -> Callable[[], None]:
        return lambda: training_step(model, optimizer, schedule, form)

    def llm() -> None:
        logits, hidden = model.llm_forward(batch["input_ids"], batch["attention_mask"])
        loss = cfg.loss.text_weight * text_loss(logits, batch["labels"])
        loss = loss + model.voken_features(batch["input_ids"], hidden).sum()  # surrogate for the image side
        loss.backward()

    def mapper() -> None:
        features = features0.detach().requires_grad_(True)  # grads flow back to the LLM in the step
        model.condition(features).backward(grad_cond)

    def mapper_per_sample() -> None:
        # The mapper as nn.Transformer runs it: the queries' self-attention once per sample.
        m, features = model.mapper, features0.detach().requires_grad_(True)
        queries = m.queries.unsqueeze(0).expand(features.shape[0], -1, -1)  # (N, Q, W)
        m.out(m.transformer(src=m.mlp(features), tgt=queries)).backward(grad_cond)

    def unet() -> None:
        cond = cond0.detach().requires_grad_(True)
        loss = ldm_loss(model.denoise, model.scheduler, latents, cond, min_snr_gamma=cfg.loss.min_snr_gamma)
        loss.backward()

    targets = model.encode_captions(batch["caption_ids"])

    def cap_loss_fb() -> None:
        cap_loss(cond0.detach().requires_grad_(True), targets).backward()

    def set_fake_grads() -> None:
        for p, g in zip(trainable, fake_grads):
            p.grad = g.clone()

    def optim_step() -> None:
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)

    items = [Item(f"full step, {name}", full(form)) for name, form in forms.items()] + [
        Item("LLM fwd+bwd", llm, drop_grads),
        Item("mapper fwd+bwd", mapper, drop_grads),
        Item(PER_SAMPLE_MAPPER, mapper_per_sample, drop_grads),
        Item("UNet fwd+bwd (ldm_loss)", unet, drop_grads),
        Item("latent encode (no grad)", lambda: model.target_latents(batch)),
        Item("CAP targets: text encoder", lambda: model.caption_targets(batch)),
        Item("CAP loss fwd+bwd", cap_loss_fb),
        Item("CFG dropout", lambda: drop_features(features0, cfg.guidance.cfg_dropout)),
        Item("AdamW + schedule + zero_grad", optim_step, prepare=set_fake_grads),
    ]
    items.append(Item("CAP targets: cached", lambda: model.caption_targets(forms["text-encoder cache"])))
    if "latent cache" in forms:  # not in pixel space
        items.append(Item("latents from cached moments", lambda: model.target_latents(forms["latent cache"])))
    return items


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def time_items(
    items: list[Item], warmup: int, repeats: int, seed: int, clock: Callable[[], float] = time.perf_counter
) -> dict[str, list[float]]:
    """Round-robin over the items, order rotated each round; seconds of ``clock`` per run."""
    times: dict[str, list[float]] = {item.name: [] for item in items}
    for r in range(warmup + repeats):
        shift = r % len(items)
        for item in items[shift:] + items[:shift]:
            item.prepare()
            torch.manual_seed(seed + r)  # per-step seeding, as on_train_batch_start does
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = clock()
            item.run()
            elapsed = clock() - start
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
            item.reset()
            if r >= warmup:
                times[item.name].append(elapsed)
                item.page_faults.append(faults)
    return times


def busy_cores(seconds: float = 0.5) -> float:
    """Cores kept busy by other processes, sampled from /proc/stat while this one sleeps.

    The load average would do, but it lags: it still counts a benchmark run a minute ago.
    """
    def read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields) - idle, sum(fields)

    try:
        busy0, total0 = read()
        time.sleep(seconds)
        busy1, total1 = read()
    except OSError:
        return os.getloadavg()[0]
    return (os.cpu_count() or 1) * (busy1 - busy0) / max(1, total1 - total0)


def iqr(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4)
    return q3 - q1


def start_run(args: argparse.Namespace) -> tuple[int, int, float]:
    """Common start of the benchmarks: threads set, seed set, load measured -> (cores, threads, busy)."""
    # nn.Transformer's note that norm_first disables nested tensors: expected, not news here.
    warnings.filterwarnings("ignore", message="enable_nested_tensor is True")
    cores = os.cpu_count() or 1
    threads = args.threads or cores
    torch.set_num_threads(threads)
    busy = busy_cores()  # before this run adds to it
    torch.manual_seed(args.seed)
    return cores, threads, busy


def main() -> None:
    args = parse_args()
    cores, threads, busy = start_run(args)
    cfg = build_config(args)
    model = MiniGPT5(cfg).train()
    batch = make_batch(model, args)

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    print(f"torch {torch.__version__}, {threads} thread(s) of {cores} cores; {busy:.1f} kept busy by others at start")
    if busy + threads > cores + 0.3:
        print(
            "note: other processes are using the cores; multi-threaded ops then wait on their slowest "
            "thread and every figure inflates (try --threads 1, or rerun when the machine is idle)"
        )
    print(
        f"config: LLM {cfg.llm.hidden_size}x{cfg.llm.num_layers} (ff {cfg.llm.intermediate_size}), "
        f"mapper {cfg.mapper.width} {cfg.mapper.num_encoder_layers}+{cfg.mapper.num_decoder_layers} "
        f"(ff {cfg.mapper.ff_size}), UNet {cfg.diffusion.unet_channels} x-attn {cfg.diffusion.cross_attention_dim}, "
        f"{cfg.diffusion.latent_space} space at {cfg.diffusion.resolution}px "
        f"(UNet input {cfg.diffusion.resolution // model.latents.downsample_factor}px)"
    )
    print(
        f"batch: {args.batch} captions of {args.words} words, input_ids {tuple(batch['input_ids'].shape)}, "
        f"caption_ids {tuple(batch['caption_ids'].shape)}; params {trainable:,} trainable, {frozen:,} frozen"
    )

    forms = cached_forms(model, batch)
    items = build_items(model, forms)
    times = time_items(items, args.warmup, args.repeats, args.seed, CLOCKS[args.clock])
    ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
    # Interquartile range: a neighbour's burst stalls a few repetitions by seconds; max - min would show only that.
    spread = {name: 1000 * iqr(t) for name, t in times.items()}
    faults = {item.name: statistics.median(item.page_faults) for item in items}
    report(ms, spread, faults, list(forms), args)


def report(ms: dict[str, float], spread: dict[str, float], faults: dict[str, float], forms: list[str],
           args: argparse.Namespace) -> None:
    """The table of medians, then each form's ratio to the sum of parts and what explains the rest."""
    sum_parts = sum(ms[n] for n in PARTS)
    pieces = COMMON_REMAINDER + sorted({n for form in forms for n in FORM_REMAINDER[form]})
    print(f"\nmedian of {args.repeats} interleaved repetitions ({args.warmup} warm-up), {args.clock} ms; "
          "IQR = p75 - p25")
    row = "{:<40} {:>9} {:>9} {:>12}"
    print(row.format("item", "median", "IQR", "page faults"))
    print(row.format("-" * 40, "-" * 9, "-" * 9, "-" * 12))

    def line(label: str, name: str) -> None:
        print(row.format(label, f"{ms[name]:.1f}", f"{spread[name]:.1f}", f"{faults[name]:.0f}"))

    for name in PARTS:
        line(f"  {name}", name)
    print(row.format("sum of parts", f"{sum_parts:.1f}", "", f"{sum(faults[n] for n in PARTS):.0f}"))
    for name in pieces:
        line(f"  + {name}", name)
    for form in forms:
        line(f"full step, {form}", f"full step, {form}")
    line(f"  ({PER_SAMPLE_MAPPER})", PER_SAMPLE_MAPPER)

    print(f"\nfull / sum of parts (goal <= {GOAL:.2f}); remainder = what that form still runs besides the parts")
    table = "{:<20} {:>9} {:>8} {:>11} {:>13} {:>8}"
    print(table.format("form", "full ms", "ratio", "remainder", "unexplained", "verdict"))
    for form in forms:
        full = ms[f"full step, {form}"]
        rest = sum(ms[n] for n in COMMON_REMAINDER + FORM_REMAINDER[form])
        unexplained = full - sum_parts - rest
        print(table.format(form, f"{full:.1f}", f"{full / sum_parts:.3f}", f"{100 * rest / sum_parts:+.1f}%",
                           f"{100 * unexplained / sum_parts:+.1f}%", "MET" if full / sum_parts <= GOAL else "NOT MET"))
    saved = ms[PER_SAMPLE_MAPPER] - ms["mapper fwd+bwd"]
    print(f"\nmapper: queries' self-attention once per batch saves {saved:.1f} ms of {ms[PER_SAMPLE_MAPPER]:.1f} "
          f"({100 * saved / ms[PER_SAMPLE_MAPPER]:.0f}%); it is one of the parts, so it shortens the step and the "
          "sum alike")


if __name__ == "__main__":
    main()
