"""``minigpt5 generate``: an interleaved story from a checkpoint (or an untrained tiny model).

  minigpt5 generate --ckpt outputs/demo/uas/checkpoints/last.ckpt --prompt "a red circle" --out outputs/story
  minigpt5 generate --model models/mls --quantize 4bit --offload --dtype bfloat16 --prompt "..." --out outputs/story
  minigpt5 generate --tiny --prompt "look: <image> and then" --image cat.png --out outputs/try

Writes ``story.html`` (self-contained), ``image_000.png`` .. and ``record.json`` to ``--out``.
Unset decoding flags take the ``--decoding`` preset (:mod:`minigpt5.decoding`): ``official``,
the authors' code (temperature 1, top-p 0.9, repetition penalty 2 over the generated tokens,
guidance 7.5, 50 steps), or ``world``, greedy for the synthetic world's checkpoints (the demo's).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from PIL import Image, UnidentifiedImageError

from lit_models.model_loading import add_inference_arguments, inference_options
from lit_models.model_loading import load_model as load_source
from lit_models.pages import write_outputs
from minigpt5.config import SAMPLER_NAMES, MiniGPT5Config, VisionConfig
from minigpt5.decoding import PRESETS, resolve_decoding
from minigpt5.generate import GenerationConfig, check_image_markers, generate
from minigpt5.model import MiniGPT5
from minigpt5.pretrained import with_options
from minigpt5.progress import add_progress_flag


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minigpt5 generate", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="a MiniGPT5Module checkpoint (its config rebuilds the frozen parts)")
    source.add_argument("--model", help="a model folder (`minigpt5 export --format pretrained`) or a hub id holding one")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="read a checkpoint that holds more than tensors (runs its code: trusted files only)")
    source.add_argument("--tiny", action="store_true", help="an untrained tiny model with a CLIP tower, for trying it out")
    parser.add_argument("--prompt", required=True, help="text; each <image> marks where the next --image goes")
    parser.add_argument("--image", action="append", default=[], metavar="PATH",
                        help="input image, repeatable, matched to the <image> markers in order")
    parser.add_argument("--out", default="outputs/generate", help="folder for story.html, the PNGs and record.json")
    parser.add_argument("--decoding", choices=tuple(PRESETS), default="official",
                        help="preset for every decoding flag left unset")
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--min-new-tokens", type=int)
    parser.add_argument("--temperature", type=float, help="0 = greedy")
    parser.add_argument("--greedy", action="store_true", help="greedy decoding (same as --temperature 0)")
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--repetition-penalty", type=float)
    parser.add_argument("--penalty-scope", choices=("generated", "context"),
                        help="tokens the penalty counts: the generated ones or the whole context, prompt included")
    parser.add_argument("--max-images", type=int, help="stop drawing after this many (0: text only)")
    parser.add_argument("--force-image", action="store_true",
                        help="write [IMG0] first, as the official code's force_generation does")
    parser.add_argument("--guidance-scale", type=float, help="default: the preset's, else the model config's")
    parser.add_argument("--steps", type=int, help="diffusion steps; default: the preset's, else the model config's")
    parser.add_argument("--sampler", choices=SAMPLER_NAMES, help="diffusion sampler; default: the model config's")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--no-cache", action="store_true", help="recompute the whole prefix for every token")
    add_progress_flag(parser)
    add_inference_arguments(parser)
    return parser


def generation_config(args: argparse.Namespace) -> GenerationConfig:
    """The ``--decoding`` preset under the flags that were set."""
    return resolve_decoding(
        args.decoding, max_new_tokens=args.max_new_tokens, min_new_tokens=args.min_new_tokens,
        temperature=args.temperature, do_sample=False if args.greedy else None, top_p=args.top_p,
        repetition_penalty=args.repetition_penalty, penalty_scope=args.penalty_scope,
        max_images=args.max_images, force_image=args.force_image or None,
        guidance_scale=args.guidance_scale, num_inference_steps=args.steps, sampler=args.sampler,
        seed=args.seed, use_cache=False if args.no_cache else None,
    )


def load_model(args: argparse.Namespace) -> MiniGPT5:
    options = inference_options(args)
    if args.tiny:
        return with_options(MiniGPT5(MiniGPT5Config(vision=VisionConfig(kind="clip"))), options)
    return load_source(args.model or args.ckpt, options, allow_pickle=args.allow_pickle)


def load_images(paths: list[str]) -> list[Image.Image]:
    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:  # a bomb: too many pixels
            raise ValueError(f"cannot read input image {path}: {err}") from err
    return images


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = generation_config(args)
        check_image_markers(args.prompt, len(args.image))  # before the model is built
        images = load_images(args.image)
        model = load_model(args)
        result = generate(model, args.prompt, images, cfg, progress=args.progress)
    except (ValueError, FileNotFoundError) as err:
        print(f"minigpt5 generate: error: {err}", file=sys.stderr)
        return 2
    paths = write_outputs(result, args.out)
    print(f"{len(result.token_ids)} tokens, {len(result.images)} image(s), stopped at {result.stopped}")
    print(f"story:  {paths.html}")
    for path in paths.images:
        print(f"image:  {path}")
    print(f"record: {paths.record}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
