"""Fast data path: a step on latent-cached targets vs VAE encoding on the fly; shards vs a JPEG folder.

1. One stage-1 training step (``benchmarks/step_breakdown.py``'s ``training_step``: forward,
   total loss, backward, AdamW + schedule) on a batch whose targets are cached VAE moments
   (``target_latent_moments``, as ``data.latents`` gives from ``minigpt5 data
   encode-latents`` shards) against the same batch as pixels encoded by the VAE inside the
   step. Both draw the same noise from the same seed; the script checks that their losses
   agree before timing. Goal: on-the-fly / cached step time >= 1.3.

   The default VAE has SD's encoder layout (4 blocks of 2 ResNet layers, attention in the
   mid block, 8x down-sampling) at a quarter of SD's widths (32, 64, 128, 128 vs 128, 256,
   512, 512) on 128 px images instead of 512 px, so the UNet sees 16 px latents, as in
   ``step_breakdown.py``. The encoder's cost relative to the rest of the step is what
   decides the ratio; the script prints that share so the figure can be carried to other
   sizes (ratio = 1 / (1 - share)).

2. Reading N target images: WebDataset shards read with ``tarfile_samples`` (what the
   training stream reads with) against a plain torch ``Dataset`` opening one JPEG (and
   its caption file) per item, on the same images, with the same decode and transform
   (``decode_sample`` then ``to_target_tensor``). Timed twice: the full read (bytes ->
   target tensor) and the I/O alone (bytes only, no decode). With ``--cold`` every file's
   pages are dropped from the page cache before each pass (``posix_fadvise DONTNEED``,
   which needs no root), otherwise the files are read warm from the page cache.
   Goal: folder / shards time >= 3.

Repetitions alternate the two sides (order rotated each round) so background load hits
both alike; figures are medians. The script reports; it never asserts a time.

    python benchmarks/data_path.py                     # about 1-2 minutes on 2 idle cores
    python benchmarks/data_path.py --only read --images 5000 --cold
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image, ImageDraw
from torch.utils.data import Dataset
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaForCausalLM
from webdataset.tariterators import tarfile_samples

from data_modules.cache_records import array_to_bytes
from data_modules.latents import cache_record, cached_moments
from data_modules.shards import decode_sample
from data_modules.writer import write_shards
from lit_models.optim import OptimConfig, build_optimizer
from minigpt5.config import DiffusionConfig, MapperConfig, MiniGPT5Config
from minigpt5.images import to_target_tensor
from minigpt5.model import MiniGPT5
from step_breakdown import Item, add_size_args, iqr, make_batch, sized_parts, start_run, time_items, training_step

STEP_GOAL = 1.3  # on-the-fly / cached step time
READ_GOAL = 3.0  # JPEG folder / shards read time


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--only", choices=("step", "read"), help="run one of the two benchmarks")
    add("--threads", type=int, default=0, help="torch threads; 0 = all cores")
    add("--seed", type=int, default=0)
    add("--warmup", type=int, default=2)
    # the step
    add("--batch", type=int, default=8, help="captions (= target images) per step")
    add("--words", type=int, default=10, help="words per caption")
    add("--max-length", type=int, default=64)
    add("--repeats", type=int, default=10, help="timed steps of each kind (median reported)")
    add("--vae-channels", type=int, nargs="+", default=[32, 64, 128, 128], help="VAE block widths (SD: 128 256 512 512)")
    add("--vae-layers", type=int, default=2, help="ResNet layers per VAE block (SD: 2)")
    add_size_args(parser)
    parser.set_defaults(resolution=128, latent_space="vae")
    # the read
    add("--images", type=int, default=1000, help="images read per pass")
    add("--image-size", type=int, nargs=2, default=[400, 300], metavar=("W", "H"),
        help="stored JPEG size (CC3M images are a few hundred pixels a side)")
    add("--target-resolution", type=int, default=256, help="the transform's output side")
    add("--shard-size", type=int, default=1000, help="images per shard")
    add("--read-repeats", type=int, default=3, help="timed passes of each kind (median reported)")
    add("--cold", action="store_true", help="drop the files from the page cache before each pass")
    add("--workdir", help="where the images are written and kept (default: a temporary folder, removed after)")
    return parser.parse_args()


# ---- 1. the step ----

def step_config(args: argparse.Namespace) -> MiniGPT5Config:
    """``step_breakdown``'s sizes with the SD-shaped VAE of the flags."""
    llm, diffusion = sized_parts(args, args.max_length)
    diffusion.vae_channels, diffusion.vae_layers_per_block = tuple(args.vae_channels), args.vae_layers
    diffusion.__post_init__()  # re-check the edited sizes
    mapper = MapperConfig(width=256, num_encoder_layers=2, num_decoder_layers=2, num_heads=8, ff_size=1024)
    return MiniGPT5Config(llm=llm, mapper=mapper, diffusion=diffusion)


def bench_step(args: argparse.Namespace) -> None:
    cfg = step_config(args)
    model = MiniGPT5(cfg).train()
    pixels_batch = make_batch(model, args)
    with torch.no_grad():
        moments = model.latents.moments(pixels_batch["target_pixels"])  # (N, 2c, h, w), as encode-latents writes
    cached_batch = {k: v for k, v in pixels_batch.items() if k != "target_pixels"}
    cached_batch["target_latent_moments"] = moments

    losses = [model(b, generator=torch.Generator().manual_seed(args.seed)).total(cfg.loss).item()
              for b in (pixels_batch, cached_batch)]
    optimizer, schedule = build_optimizer(model, OptimConfig(), ("mapper.",), total_steps=1000)
    items = [
        Item("step, VAE encode on the fly", lambda: training_step(model, optimizer, schedule, pixels_batch)),
        Item("step, cached latents", lambda: training_step(model, optimizer, schedule, cached_batch)),
        Item("VAE encode alone (no grad)", lambda: model.encode_images(pixels_batch["target_pixels"])),
    ]
    times = time_items(items, args.warmup, args.repeats, args.seed)
    ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
    vae_params = sum(p.numel() for p in model.latents.vae.encoder.parameters())
    latent = cfg.diffusion.resolution // model.latents.downsample_factor
    print(f"\n== 1. training step: cached latents vs VAE encoding on the fly (batch {args.batch})")
    print(f"VAE encoder {cfg.diffusion.vae_channels} x {cfg.diffusion.vae_layers_per_block} layers "
          f"({vae_params:,} params) at {cfg.diffusion.resolution} px -> {latent} px latents; "
          f"UNet {cfg.diffusion.unet_channels}; LLM {cfg.llm.hidden_size}x{cfg.llm.num_layers}")
    print(f"loss with the same seed: on the fly {losses[0]:.6f}, cached {losses[1]:.6f} "
          f"({'equal' if abs(losses[0] - losses[1]) <= 1e-5 * abs(losses[0]) else 'DIFFERENT'})")
    print(f"median of {args.repeats} interleaved repetitions ({args.warmup} warm-up), ms; IQR = p75 - p25")
    for name, t in times.items():
        print(f"  {name:<32} {ms[name]:>9.1f} {1000 * iqr(t):>8.1f}")
    on_the_fly, cached = ms["step, VAE encode on the fly"], ms["step, cached latents"]
    ratio = on_the_fly / cached
    share = ms["VAE encode alone (no grad)"] / on_the_fly
    print(f"ratio on the fly / cached = {ratio:.2f}   (goal >= {STEP_GOAL}: {'MET' if ratio >= STEP_GOAL else 'NOT MET'}); "
          f"VAE encode is {100 * share:.0f}% of the on-the-fly step (1 / (1 - share) = {1 / (1 - share):.2f})")
    flops = paper_flops(args.max_length)
    paper_share = flops["VAE encode"] / sum(flops.values())
    print("paper sizes, counted not timed (TFLOPs per image): "
          + ", ".join(f"{k} {v:.2f}" for k, v in flops.items())
          + f" -> VAE encode {100 * paper_share:.0f}% of those, so at most {1 / (1 - paper_share):.2f}x from the cache")


def paper_flops(tokens: int = 64) -> dict[str, float]:
    """TFLOPs per target image at the paper's sizes, counted on the meta device (no weights, nothing timed).

    SD 2.1-base's VAE encoder at 512 px, its UNet (forward + backward to the conditioning,
    weights frozen) on 64 px latents, and a Vicuna-7B-shaped Llama (forward + backward to
    its inputs, frozen) on ``tokens`` tokens. Configs are SD 2.1-base's and Llama-7B's.
    """
    with torch.device("meta"):
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            norm_num_groups=32).requires_grad_(False)
        unet = UNet2DConditionModel(
            sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
            attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        ).requires_grad_(False)
        llm = LlamaForCausalLM(LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                           num_attention_heads=32, vocab_size=32000)).requires_grad_(False)
        pixels, latents = torch.empty(1, 3, 512, 512), torch.empty(1, 4, 64, 64)
        cond, embeds = torch.empty(1, 77, 1024, requires_grad=True), torch.empty(1, tokens, 4096, requires_grad=True)
        timesteps = torch.zeros(1, dtype=torch.long)

    def tflops(work: Callable[[], None]) -> float:
        with FlopCounterMode(display=False) as counter:
            work()
        return counter.get_total_flops() / 1e12

    return {
        "VAE encode": tflops(lambda: vae.encode(pixels)),
        "UNet fwd+bwd": tflops(lambda: unet(latents, timesteps, encoder_hidden_states=cond).sample.sum().backward()),
        "LLM fwd+bwd": tflops(lambda: llm(inputs_embeds=embeds).logits.sum().backward()),
    }


# ---- 2. reading images ----

def synthetic_photo(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """A JPEG-friendly stand-in for a photo: a colour gradient, a few shapes and mild noise."""
    w, h = size
    top, bottom = [rng.randrange(256) for _ in range(3)], [rng.randrange(256) for _ in range(3)]
    gradient = Image.linear_gradient("L").resize((w, h))
    image = Image.composite(Image.new("RGB", (w, h), tuple(top)), Image.new("RGB", (w, h), tuple(bottom)), gradient)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randrange(3, 8)):
        x, y = rng.randrange(w), rng.randrange(h)
        box = (x, y, x + rng.randrange(20, w // 2), y + rng.randrange(20, h // 2))
        draw.ellipse(box, fill=tuple(rng.randrange(256) for _ in range(3)))
    noise = Image.effect_noise((w, h), 24).convert("RGB")
    return Image.blend(image, noise, 0.15)


def write_image_set(folder: Path, args: argparse.Namespace) -> tuple[list[Path], list[str], list[str]]:
    """The same N images as ``folder/jpg/{i}.jpg`` + ``.txt`` files, as shards, and as shards with latents.

    The latent shards hold ``latent.npy`` members of SD's shape at the target resolution
    ((8, R/8, R/8) float32) with random values: reading them costs the same for any values.
    -> (jpeg paths, shard paths, latent shard paths)."""
    rng = random.Random(args.seed)
    jpg_dir = folder / "jpg"
    jpg_dir.mkdir(parents=True, exist_ok=True)
    paths, samples = [], []
    for i in range(args.images):
        path = jpg_dir / f"{i:07d}.jpg"
        synthetic_photo(rng, tuple(args.image_size)).save(path, format="JPEG", quality=90)
        caption = f"a picture number {i}"
        path.with_suffix(".txt").write_text(caption)
        paths.append(path)
        samples.append({"__key__": f"{i:07d}", "jpg": path.read_bytes(), "txt": caption})
    shards = write_shards(str(folder / "%06d.tar"), samples, args.shard_size)
    side = args.target_resolution // 8
    gen = np.random.default_rng(args.seed)
    record = json.dumps(latent_record(args)).encode()
    cached = [dict(s, **{"latent.npy": array_to_bytes(gen.standard_normal((8, side, side))), "latent.json": record})
              for s in samples]
    latent_shards = write_shards(str(folder / "latent-%06d.tar"), cached, args.shard_size)
    return paths, shards, latent_shards


def latent_record(args: argparse.Namespace) -> dict[str, Any]:
    """The cache record of SD's VAE at the target resolution (what the latent shards claim)."""
    return cache_record(DiffusionConfig(path="sd-2.1-base", latent_space="vae", resolution=args.target_resolution))


class JpegFolder(Dataset):
    """One JPEG file and its caption file per item: the per-file loader being compared."""

    def __init__(self, paths: list[Path], transform: Callable[[dict[str, Any]], Any]) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Any:
        path = self.paths[i]
        return self.transform({"__key__": path.stem, "jpg": path.read_bytes(), "txt": path.with_suffix(".txt").read_bytes()})


def shard_reader(urls: list[str], transform: Callable[[dict[str, Any]], Any]) -> Iterator[Any]:
    """The shards' samples through ``transform``, read as the training stream reads them."""
    for sample in tarfile_samples({"url": u} for u in urls):
        yield transform(sample)


def drop_from_page_cache(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def bench_read(args: argparse.Namespace, workdir: Path) -> None:
    start = time.perf_counter()
    paths, shards, latent_shards = write_image_set(workdir, args)
    files = paths + [p.with_suffix(".txt") for p in paths]
    jpeg_kb = sum(p.stat().st_size for p in paths) / len(paths) / 1024
    print(f"\n== 2. reading {args.images} images: {len(shards)} shards vs a JPEG folder "
          f"(written in {time.perf_counter() - start:.0f} s to {workdir})")
    print(f"images {args.image_size[0]}x{args.image_size[1]} JPEG q90, {jpeg_kb:.0f} KiB on average; "
          f"transform to {args.target_resolution} px; page cache {'dropped before each pass (--cold)' if args.cold else 'warm'}")

    def full(sample: dict[str, Any]) -> torch.Tensor:
        image, _ = decode_sample(sample)
        return to_target_tensor(image, args.target_resolution)

    def io_only(sample: dict[str, Any]) -> int:
        return len(sample["jpg"]) + len(sample["txt"])

    record = latent_record(args)

    def latents(sample: dict[str, Any]) -> torch.Tensor:
        return cached_moments(sample, ["jpg"], record, "require")  # (1, 8, R/8, R/8), as the training encoder reads

    def prepare() -> None:
        if args.cold:
            drop_from_page_cache([Path(s) for s in shards + latent_shards] + files)

    def consume(items: Iterator[Any]) -> None:
        count = sum(1 for _ in items)
        assert count == args.images, f"read {count} of {args.images} images"

    items = [
        Item("shards: decode + transform", lambda: consume(shard_reader(shards, full)), prepare=prepare),
        Item("folder: decode + transform", lambda: consume(iter(JpegFolder(paths, full))), prepare=prepare),
        Item("shards: bytes only", lambda: consume(shard_reader(shards, io_only)), prepare=prepare),
        Item("folder: bytes only", lambda: consume(iter(JpegFolder(paths, io_only))), prepare=prepare),
        Item("shards: cached latents", lambda: consume(shard_reader(latent_shards, latents)), prepare=prepare),
    ]
    times = time_items(items, 1, args.read_repeats, args.seed)
    ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
    print(f"median of {args.read_repeats} interleaved passes (1 warm-up), ms per pass; images/s")
    for name, t in times.items():
        print(f"  {name:<28} {ms[name]:>9.1f} {1000 * iqr(t):>8.1f}   {args.images / (ms[name] / 1000):>8.0f}/s")
    ratio = ms["folder: decode + transform"] / ms["shards: decode + transform"]
    io_ratio = ms["folder: bytes only"] / ms["shards: bytes only"]
    print(f"ratio folder / shards, decode + transform = {ratio:.2f}   (goal >= {READ_GOAL}: "
          f"{'MET' if ratio >= READ_GOAL else 'NOT MET'}); bytes only = {io_ratio:.2f}")
    print(f"ratio folder (decode + transform) / shards with cached latents (no decode) = "
          f"{ms['folder: decode + transform'] / ms['shards: cached latents']:.2f}")


def main() -> None:
    args = parse_args()
    cores, threads, busy = start_run(args)
    print(f"torch {torch.__version__}, {threads} thread(s) of {cores} cores; {busy:.1f} kept busy by others at start")
    if args.only in (None, "step"):
        bench_step(args)
    if args.only in (None, "read"):
        if args.workdir:
            bench_read(args, Path(args.workdir))
        else:
            with tempfile.TemporaryDirectory(prefix="minigpt5-data-path-") as tmp:
                bench_read(args, Path(tmp))


if __name__ == "__main__":
    main()
