"""``minigpt5 eval``: a checkpoint (and the SD2 baseline) under one of the paper's protocols.

  minigpt5 eval --ckpt outputs/uas/checkpoints/last.ckpt --protocol cc3m --shards 'data/cc3m/val/{000000..000003}.tar'
  minigpt5 eval --ckpt outputs/mls/checkpoints/last.ckpt --protocol vist --targets last --context text \\
      --shards 'data/vist/test/{000000..000005}.tar' --systems minigpt5 sd2 --guidance-scale 1 3 7.5

Writes ``results.md`` and ``results.json`` (metrics, settings, checkpoint path and hash) and
``samples_*.png`` (ground truth above generated) to ``--out``; a sweep of several guidance
scales also ``guidance_sweep.png`` (each metric against the scale, one line per system, shown in
``results.md``). Unset decoding flags take the protocol's preset (:mod:`minigpt5.decoding`): for
cc3m, vist and mmdialog the official code's (guidance 7.5, 50 diffusion steps, temperature 1.0,
top-p 0.9, repetition penalty 2.0 over the generated tokens, 1 to 256 new tokens), for the
synthetic world's greedy without a penalty; the diffusion sampler is the model config's
(``guidance.sampler``), seed 42. The protocol follows the official one by default: free drawing
(``--draw free``: the model decides whether to draw, the image metrics are over the items it
drew for, and ``drawn`` gives their share), VIST steps in the official prompt, the official
CLIP-F1; BLEU over words (``--bleu chars`` for the official code's). ``--guidance-scale`` takes
several values to sweep (1 means no guidance); each gives one row per system.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import sys
from pathlib import Path
from typing import Any, Optional


from data_modules.shards import SampleCounter
from minigpt5.task_prompts import VIST_IMAGE_PROMPT
from evaluation.extractors import ExtractorPaths, load_extractors, tiny_extractors
from evaluation.items import PROTOCOLS, SPEAKERS, WORLD_PROTOCOLS, decoding_preset, read_items
from evaluation.protocols import (
    CLIP_F1_DEFINITIONS, DRAW_MODES, DRAW_PROTOCOLS, ProtocolOptions, Run, comparison_grid, run_protocol,
)
from evaluation.report import checkpoint_identity, quoted_rows, write_results
from evaluation.sweep_chart import write_sweep_plot
from evaluation.systems import VIST_PROMPTS, MiniGPT5System, StableDiffusionBaseline, WriteThenDraw, target_prompt
from evaluation.text_metrics import BLEU_TOKENS
from evaluation.world_scores import world_summary
from lit_models.model_loading import add_inference_arguments, inference_options, load_model, weights_file
from lit_models.pages import world_examples_html
from minigpt5.config import SAMPLER_NAMES, ConfigError
from minigpt5.decoding import resolve_decoding
from minigpt5.generate import GenerationConfig
from minigpt5.images import to_pil_images
from minigpt5.loading import WeightsNotFoundError
from minigpt5.progress import add_progress_flag

SYSTEMS = ("minigpt5", "sd2", "llm-then-sd")
QUOTED = Path(__file__).resolve().parents[1] / "configs" / "eval" / "quoted.yaml"  # found from any working directory


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minigpt5 eval", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="MiniGPT5Module checkpoint (its config gives the frozen SD too)")
    source.add_argument("--model", help="a model folder (`minigpt5 export --format pretrained`) or a hub id holding one")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="read a checkpoint that holds more than tensors (runs its code: trusted files only)")
    parser.add_argument("--protocol", required=True, choices=PROTOCOLS)
    parser.add_argument("--shards", required=True, help="test shards, brace pattern (as written by `minigpt5 data`)")
    parser.add_argument("--targets", choices=("all", "last"), default="all",
                        help="vist/mmdialog: every step/response, or only the last of each story/dialogue")
    parser.add_argument("--speakers", choices=SPEAKERS, default="both",
                        help="mmdialog: whose turns are targets: both (every turn after the first, as the official "
                             "code) or assistant (as a model trained with data.choices.speakers: assistant)")
    parser.add_argument("--context", choices=("both", "text", "images"), default="both",
                        help="vist/mmdialog: what of the earlier turns the model sees")
    parser.add_argument("--draw", choices=DRAW_MODES, default="free",
                        help="cc3m/vist: free (the model decides whether to draw; scored where it did, as the "
                             "official code) or forced (teacher-forced vokens: every item gets an image)")
    parser.add_argument("--vist-prompt", choices=tuple(VIST_PROMPTS), default="official",
                        help=f"vist: the step's text as the model is given it: official ({VIST_IMAGE_PROMPT!r}) "
                             "or none (the bare text, as this project's continuation task trains it)")
    parser.add_argument("--clip-f1", choices=CLIP_F1_DEFINITIONS, default="official",
                        help="mmdialog: official (text-text and image-image CLIP similarities pooled per dialogue) "
                             "or image (images only, negative similarities as 0, image-less dialogues left out)")
    parser.add_argument("--bleu", choices=BLEU_TOKENS, default="words",
                        help="mmdialog: BLEU over words, or over characters as the official code computes it")
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=["minigpt5"])
    parser.add_argument("--sd2-text", choices=("target", "story"), default="target",
                        help="SD2 baseline prompt: the target step's text, or the whole story so far")
    parser.add_argument("--guidance-scale", type=float, nargs="+",
                        help="one row per value (default: 7.5; synthetic protocols: the model's own)")
    parser.add_argument("--steps", type=int, help="diffusion steps (default: 50; synthetic: the model's own)")
    parser.add_argument("--sampler", choices=SAMPLER_NAMES, help="diffusion sampler (default: the model's guidance.sampler)")
    parser.add_argument("--temperature", type=float, help="0 is greedy (default: 1.0; synthetic: 0)")
    parser.add_argument("--top-p", type=float, help="nucleus sampling (default: 0.9; synthetic: greedy)")
    parser.add_argument("--repetition-penalty", type=float, help="default: 2.0; synthetic: 1.0 (off)")
    parser.add_argument("--penalty-scope", choices=("generated", "context"),
                        help="tokens the penalty counts: the generated ones (default, the official code's) "
                             "or the whole context, prompt included")
    parser.add_argument("--max-new-tokens", type=int, help="default: 256; synthetic: 32")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-items", type=int, default=None, help="stop after this many test items")
    parser.add_argument("--extractors", choices=("real", "tiny"), default="real",
                        help="tiny: random small networks, offline; their numbers only check the pipeline")
    parser.add_argument("--inception", help="torch-fidelity Inception weights file (FID, IS)")
    parser.add_argument("--cleanfid-inception", help="clean-fid's inception-2015-12-05.pt")
    parser.add_argument("--clip", choices=("clip-vit-l-14", "clip-vit-b-32"),
                        help="default: ViT-L/14 for cc3m and vist, ViT-B/32 for mmdialog")
    parser.add_argument("--clip-path", help="local CLIP folder (default: the OpenAI hub id)")
    parser.add_argument("--sbert", help="Sentence-BERT folder or hub id (default all-MiniLM-L6-v2)")
    parser.add_argument("--quoted", default=str(QUOTED),
                        help="published figures (GILL, Divter, the paper's own) added as quoted rows; '' for none")
    parser.add_argument("--out", default="outputs/eval")
    parser.add_argument("--examples", type=int, default=8,
                        help="examples kept for samples_*.png (and, synthetic protocols, examples_*.html)")
    add_progress_flag(parser)
    add_inference_arguments(parser)
    return parser


def decoding_config(args: argparse.Namespace) -> GenerationConfig:
    """The protocol's decoding preset under the flags that were set."""
    return resolve_decoding(
        decoding_preset(args.protocol), max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        top_p=args.top_p, repetition_penalty=args.repetition_penalty, penalty_scope=args.penalty_scope,
        num_inference_steps=args.steps, sampler=args.sampler, seed=args.seed,
    )


def make_system(name: str, model: Any, args: argparse.Namespace, gen: GenerationConfig) -> Any:
    if name == "sd2":
        return StableDiffusionBaseline(model, text=args.sd2_text, guidance_scale=gen.guidance_scale,
                                       num_inference_steps=gen.num_inference_steps, sampler=gen.sampler, seed=gen.seed)
    if name == "llm-then-sd":
        return WriteThenDraw(model, gen)
    return MiniGPT5System(model, gen, context="text" if args.protocol == "cc3m" else args.context,
                          prompt=target_prompt(args.protocol, args.vist_prompt))


def protocol_options(args: argparse.Namespace) -> ProtocolOptions:
    """The run and scoring choices; ``--draw forced`` only where items are drawn."""
    if args.draw != "free" and args.protocol not in DRAW_PROTOCOLS:
        raise ConfigError(f"--draw {args.draw} is for {' and '.join(DRAW_PROTOCOLS)}; {args.protocol} scores free "
                          "responses, whose decision to draw is part of the score")
    return ProtocolOptions(draw=args.draw, clip_f1=args.clip_f1, bleu=args.bleu)


def save_samples(run: Run, path: Path, resolution: int) -> Optional[Path]:
    """Ground truth (top) over generated (bottom) for the kept examples that have both."""
    grid = comparison_grid(run, resolution)
    if grid is None:
        return None
    to_pil_images(grid[None] * 2 - 1)[0].save(path)
    return path


def evaluate(args: argparse.Namespace) -> tuple[Path, Path]:
    if args.protocol == "mmdialog" and "sd2" in args.systems:
        raise ConfigError("the SD2 baseline writes no text, so it has no mmdialog row; drop sd2 from --systems")
    if args.protocol not in WORLD_PROTOCOLS and "llm-then-sd" in args.systems:
        raise ConfigError("the llm-then-sd baseline is scored only by the synthetic world's protocols")
    quoted = quoted_rows(args.quoted, args.protocol) if args.quoted else []  # read first: a bad file fails fast
    options = protocol_options(args)
    source = args.model or args.ckpt
    if args.ckpt and not Path(args.ckpt).exists():  # before the extractors, whose weights may be missing too
        raise FileNotFoundError(f"checkpoint '{args.ckpt}' does not exist")
    identity = checkpoint_identity(weights_file(source))  # a model folder or hub id is resolved here, early too
    paths = ExtractorPaths(args.inception, args.cleanfid_inception, args.clip, args.clip_path, args.sbert)
    extractors = (tiny_extractors() if args.extractors == "tiny" else load_extractors(args.protocol, paths)).to(args.device)
    model = load_model(source, inference_options(args), allow_pickle=args.allow_pickle)
    resolution = model.cfg.diffusion.resolution
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    gen = decoding_config(args)
    for scale in args.guidance_scale or [gen.guidance_scale]:
        for name in args.systems:
            system = make_system(name, model, args, dataclasses.replace(gen, guidance_scale=scale))
            counter = SampleCounter()
            items = read_items(args.shards, args.protocol, args.targets, args.max_items, counter, args.speakers)
            run = run_protocol(system, items, args.protocol, extractors, resolution, options=options,
                               keep_examples=args.examples, progress=args.progress, total=args.max_items)
            stem = f"{name}_g{system.settings['guidance_scale']:g}"
            sample_path = save_samples(run, out / f"samples_{stem}.png", resolution)
            if args.protocol in WORLD_PROTOCOLS:
                page = world_examples_html(f"{system.name} on {args.protocol} ({args.shards})", run.examples,
                                           world_summary(run.metrics))
                (out / f"examples_{stem}.html").write_text(page, encoding="utf-8")
            rows.append({"system": system.name, "kind": "run", "settings": {**system.settings, "draw": options.draw},
                         "metrics": run.metrics,
                         "samples": str(sample_path) if sample_path else None,
                         "skipped": {"bad_samples": counter.bad, "steps_without_image": counter.skipped},
                         "examples": [{"group": item.group, "step": item.step, "reference": item.text, "response": text,
                                       "images": len(images)} for item, images, text in run.examples
                                      if options.draw == "free"]})
    plot = write_sweep_plot(out, rows)
    rows += quoted
    header = {
        "protocol": args.protocol,
        "checkpoint": identity,
        "shards": args.shards,
        "targets": args.targets if args.protocol != "cc3m" else "all",
        "context": args.context if args.protocol != "cc3m" else "none",
        **({"speakers": args.speakers} if args.protocol == "mmdialog" else {}),
        **scoring_header(args, options),
        "extractors": extractors.kind if extractors.kind == "real"
        else "tiny (random networks: these numbers only check the pipeline)",
        "clip": extractors.clip_name,
        **({"chance": rows[0]["metrics"]["chance"]} if args.protocol in WORLD_PROTOCOLS and rows else {}),
        **({"guidance_sweep": f"![each metric against guidance scale]({plot.name})"} if plot else {}),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return write_results(out, header, rows)


def scoring_header(args: argparse.Namespace, options: ProtocolOptions) -> dict[str, str]:
    """The protocol choices that shape this table's numbers, in words."""
    if args.protocol in DRAW_PROTOCOLS:
        vist = {"prompt": target_prompt("vist", args.vist_prompt)} if args.protocol == "vist" else {}
        return {"draw": "free: the system decides whether to draw; image metrics over the items it drew for (drawn)"
                if options.draw == "free" else "forced: teacher-forced vokens, an image for every item", **vist}
    if args.protocol == "mmdialog":
        return {"clip_f1": "official: text-text and image-image similarities pooled per dialogue"
                if options.clip_f1 == "official" else "image: image similarities only (at least 0), "
                "dialogues without images left out",
                "bleu": "over words" if options.bleu == "words" else "over characters (the official code's)"}
    return {}


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        json_path, md_path = evaluate(args)
    except (ConfigError, WeightsNotFoundError, ValueError, FileNotFoundError) as err:
        print(f"minigpt5 eval: error: {err}", file=sys.stderr)
        return 2
    print(md_path.read_text())
    print(f"results: {md_path}\n         {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
