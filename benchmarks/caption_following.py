"""Does a trained tiny model follow its captions? Colour accuracy, trained vs untrained.

For every colour x shape caption of the synthetic set, generate images with guided
sampling from (a) the checkpoint and (b) the same model with the checkpoint's
trainable weights left at their initialisation, and count how often the dominant
colour of the image is the caption's colour (chance: 1 in 6).

    python benchmarks/caption_following.py --ckpt outputs/demo/uas/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

import torch
from torchvision.utils import make_grid

from data_modules.synthetic import COLOURS, SHAPES, caption_for, colour_of, dominant_colour, dominant_shape, shape_of
from lit_models.module import MiniGPT5Module
from minigpt5.images import to_pil_images
from minigpt5.sequences import tokenize_for_text_encoder


def caption_scores(
    module: MiniGPT5Module, captions: list[str], seeds: int, scale: float, steps: int, sampler: Optional[str] = None,
    decoder_alone: bool = False,
) -> tuple[float, float, torch.Tensor]:
    """Fractions of images whose dominant colour and whose shape are the caption's, and the images;
    ``sampler`` None: the model's own (guidance.sampler); ``decoder_alone``: the frozen decoder
    from its own text encoders' caption embeddings (what it learned in pretraining), no vokens."""
    module.eval()
    model = module.model
    if decoder_alone:  # the captions' own conditioning and the empty caption's, the same for every seed
        length = model.cfg.diffusion.text_max_length
        ids = tokenize_for_text_encoder(model.sd_tokenizer, captions, length)
        cond, null = model.encode_captions(ids), model.null_caption(length, ids.device)
    images = []
    for seed in range(seeds):
        generator = torch.Generator().manual_seed(seed)
        if decoder_alone:
            images.append(model.images_from_condition(
                cond, null, scale=scale, num_inference_steps=steps, generator=generator, sampler=sampler,
            ))
        else:
            images.append(model.generate_images(
                captions, scale=scale, num_inference_steps=steps, generator=generator, sampler=sampler,
            ))
    images = torch.cat(images)  # (seeds * C, 3, H, W)
    pils = to_pil_images(images)
    wanted = captions * seeds
    colours = [dominant_colour(p) == colour_of(c) for p, c in zip(pils, wanted)]
    shapes = [dominant_shape(p) == shape_of(c) for p, c in zip(pils, wanted)]
    return sum(colours) / len(colours), sum(shapes) / len(shapes), images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="a MiniGPT5Module checkpoint trained on synthetic shapes")
    parser.add_argument("--seeds", type=int, default=4, help="images per caption")
    parser.add_argument("--scale", type=float, default=None, help="guidance scale (default: the config's)")
    parser.add_argument("--steps", type=int, default=None, help="diffusion steps (default: the config's)")
    parser.add_argument("--out", default=None, help="PNG path for the trained/untrained comparison grid")
    parser.add_argument("--decoder-alone", action="store_true",
                        help="also score the frozen decoder from its own caption embeddings (no vokens)")
    args = parser.parse_args()

    trained = MiniGPT5Module.from_checkpoint(args.ckpt)
    torch.manual_seed(0)
    untrained = MiniGPT5Module(config=trained.config, optim=trained.optim)
    guidance = trained.config.guidance
    scale = guidance.scale if args.scale is None else args.scale
    steps = args.steps or guidance.num_inference_steps
    captions = [caption_for(c, s) for c in COLOURS for s in SHAPES]

    results = {}
    grids = []
    for name, module in (("trained", trained), ("untrained", untrained)):
        results[name], results[f"{name}_shape"], images = caption_scores(module, captions, args.seeds, scale, steps)
        grids.append(images[: len(captions)])
    results.update(chance=1 / len(COLOURS), images_per_model=len(captions) * args.seeds, guidance_scale=scale, steps=steps)
    print(f"colour follows caption: trained {results['trained']:.0%}, untrained {results['untrained']:.0%}, "
          f"chance {results['chance']:.0%} ({results['images_per_model']} images each, guidance {scale}, {steps} steps)")
    print(f"shape follows caption: trained {results['trained_shape']:.0%}, untrained {results['untrained_shape']:.0%}, "
          f"chance {1 / len(SHAPES):.0%}")
    if args.decoder_alone:
        results["decoder"], results["decoder_shape"], _ = caption_scores(
            trained, captions, args.seeds, scale, steps, decoder_alone=True)
        print(f"decoder alone, from its caption embeddings: colour {results['decoder']:.0%}, "
              f"shape {results['decoder_shape']:.0%}")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        grid = make_grid((torch.cat(grids) + 1) / 2, nrow=len(captions), padding=1, pad_value=1.0)
        to_pil_images(grid.unsqueeze(0) * 2 - 1)[0].save(out)
        out.with_suffix(".json").write_text(json.dumps(results, indent=2))
        print(f"comparison grid (top: trained, bottom: untrained): {out}")


if __name__ == "__main__":
    main()
