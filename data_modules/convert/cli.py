"""``minigpt5 data ...``: write training shards from raw datasets or the synthetic generator."""

from __future__ import annotations

import argparse
import logging
import sys

from data_modules.convert.cc3m import convert_cc3m
from data_modules.convert.interleaved_jsonl import LAYOUTS, convert_jsonl
from data_modules.convert.latents import encode_latents, model_config
from data_modules.convert.mmc4 import MAX_IMAGES, MIN_SIM, convert_mmc4
from data_modules.convert.mmdialog import convert_mmdialog
from data_modules.convert.vist import convert_vist
from data_modules.synthetic import write_synthetic
from minigpt5.progress import add_progress_flag


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minigpt5 data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    cc3m = commands.add_parser("cc3m", help="CC3M tsv (caption<TAB>image_path) -> shards")
    cc3m.add_argument("--tsv", required=True, help="tsv with the header caption<TAB>image_path")
    cc3m.add_argument("--out", required=True, help="output folder for %%06d.tar shards")
    cc3m.add_argument("--image-root", help="folder the image paths are relative to (default: the tsv's folder)")
    cc3m.add_argument("--shard-size", type=int, default=10000, help="samples per shard")

    vist = commands.add_parser("vist", help="VIST stories json + image mapping -> shards, one story per sample")
    vist.add_argument("--stories", required=True, help="json: story_id -> [{caption, image_id, sequence_index}]")
    vist.add_argument("--images-map", required=True, help="json: image_id -> image path")
    vist.add_argument("--out", required=True, help="output folder for %%06d.tar shards")
    vist.add_argument("--image-root", help="folder the image paths are relative to (default: the mapping's folder)")
    vist.add_argument("--shard-size", type=int, default=1000, help="stories per shard")

    mmdialog = commands.add_parser("mmdialog", help="MMDialog conversations (json lines) -> shards, one per dialogue")
    mmdialog.add_argument("--dialogues", required=True, help="json lines: {conversation_id, conversation: [{turn}]}")
    mmdialog.add_argument("--images", required=True, help="folder holding <media id>.jpg")
    mmdialog.add_argument("--out", required=True, help="output folder for %%06d.tar shards")
    mmdialog.add_argument("--shard-size", type=int, default=1000, help="dialogues per shard")

    mmc4 = commands.add_parser("mmc4", help="MMC4 documents (json lines) + images -> shards, one story per document")
    mmc4.add_argument("--documents", required=True, nargs="+", metavar="JSONL",
                      help="MMC4 document file(s): {url, text_list, image_info: [{image_name, matched_text_index, "
                           "matched_sim}]} per line")
    mmc4.add_argument("--images", required=True, help="folder holding the images by image_name")
    mmc4.add_argument("--out", required=True, help="output folder for %%06d.tar shards")
    mmc4.add_argument("--min-sim", type=float, default=MIN_SIM,
                      help="leave out images whose matched_sim is lower (default %(default)s, as OpenFlamingo)")
    mmc4.add_argument("--max-images", type=int, default=MAX_IMAGES,
                      help="images (story steps) per document at most, the first in document order "
                           "(default %(default)s, as OpenFlamingo)")
    mmc4.add_argument("--shard-size", type=int, default=1000, help="documents per shard")

    jsonl = commands.add_parser("jsonl", help="your own interleaved data (json lines: {id, turns: [{text, images}]}) "
                                "-> shards, one story or dialogue per line")
    jsonl.add_argument("--documents", required=True, metavar="JSONL",
                       help='one object a line: {"id", "turns": [{"text", "images": [paths], "speaker"?}], '
                            '"layout"?: "story"|"dialogue"} (the schema: docs/data.md, '
                            'data_modules/convert/interleaved_jsonl.py)')
    jsonl.add_argument("--images", help="folder relative image paths are read from (default: the jsonl's folder)")
    jsonl.add_argument("--out", required=True, help="output folder for %%06d.tar shards")
    jsonl.add_argument("--layout", choices=LAYOUTS, default="story",
                       help="layout of the lines that name none: story (a text then one image per step) or "
                            "dialogue (turns alternating user, assistant) (default %(default)s)")
    jsonl.add_argument("--shard-size", type=int, default=1000, help="documents per shard")

    synthetic = commands.add_parser("synthetic", help="coloured shapes captioned 'a <colour> <shape>'")
    synthetic.add_argument("--out", required=True, help="output folder for train-/val-%%06d.tar shards")
    synthetic.add_argument("--num", type=int, default=2000, help="training samples")
    synthetic.add_argument("--val-num", type=int, default=200, help="validation samples (held out of training)")
    synthetic.add_argument("--hard-num", type=int, default=0,
                           help="stories/dialogues showing a colour x shape pair held out of stage-2 training")
    synthetic.add_argument("--size", type=int, default=64, help="image side in pixels")
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument("--shard-size", type=int, default=500, help="samples per shard")
    layout = synthetic.add_mutually_exclusive_group()
    layout.add_argument("--stories", action="store_true",
                        help="3-step shape stories built from rules (VIST layout) instead of pairs")
    layout.add_argument("--dialogues", action="store_true",
                        help="4-turn shape dialogues built from rules (MMDialog layout)")

    latents = commands.add_parser("encode-latents", help="copy shards adding each image's VAE latent (moments) "
                                  "and, with --captions, each caption's SD text-encoder output")
    latents.add_argument("--shards", required=True, help="input shards: brace pattern, folder or comma list")
    latents.add_argument("--out", required=True, help="output folder; shards keep their input names")
    latents.add_argument("-c", "--model-config", action="append", default=[], metavar="YAML",
                         help="training config file(s) whose model.config names the VAE and resolution, "
                              "as given to `minigpt5 fit -c` (repeatable, applied in order)")
    latents.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                         help="model.config override, e.g. diffusion.resolution=256 (repeatable)")
    latents.add_argument("--batch-size", type=int, default=32, help="images per VAE forward")
    latents.add_argument("--workers", type=int, default=4, help="processes decoding whole shards (0: none)")
    latents.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    latents.add_argument("--captions", action="store_true",
                         help="also cache each caption's SD text-encoder output (stage 1's CAP target)")
    for command in commands.choices.values():
        add_progress_flag(command)
    return parser


def main(argv: list[str]) -> int:
    """Run one data subcommand; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "cc3m":
            print(convert_cc3m(args.tsv, args.out, image_root=args.image_root, shard_size=args.shard_size,
                               progress=args.progress))
        elif args.command == "vist":
            print(
                convert_vist(
                    args.stories, args.images_map, args.out, image_root=args.image_root, shard_size=args.shard_size,
                    progress=args.progress,
                )
            )
        elif args.command == "encode-latents":
            cfg = model_config(args.model_config, args.overrides)
            print(encode_latents(args.shards, args.out, cfg, batch_size=args.batch_size, num_workers=args.workers,
                                 device=args.device, captions=args.captions, progress=args.progress))
        elif args.command == "mmdialog":
            print(convert_mmdialog(args.dialogues, args.images, args.out, shard_size=args.shard_size,
                                   progress=args.progress))
        elif args.command == "mmc4":
            print(convert_mmc4(args.documents, args.images, args.out, min_sim=args.min_sim,
                               max_images=args.max_images, shard_size=args.shard_size, progress=args.progress))
        elif args.command == "jsonl":
            print(convert_jsonl(args.documents, args.out, images=args.images, layout=args.layout,
                                shard_size=args.shard_size, progress=args.progress))
        else:
            shards = write_synthetic(
                args.out, num=args.num, val_num=args.val_num, size=args.size, seed=args.seed,
                shard_size=args.shard_size, hard_num=args.hard_num, progress=args.progress,
                layout="stories" if args.stories else "dialogues" if args.dialogues else "pairs",
            )
            print(f"train shards: {shards.train}\nval shards: {shards.val or '(none)'}"
                  + (f"\nhard shards: {shards.hard}" if shards.hard else ""))
    except (FileNotFoundError, ValueError) as err:
        print(f"minigpt5 data {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0
