"""``minigpt5 export``: one consolidated trainable-weights file from any training checkpoint,
or (``--format pretrained``) a model folder that ``MiniGPT5.from_pretrained`` loads.

  minigpt5 export --ckpt outputs/uas/checkpoints/last.ckpt --out trainable.safetensors
  minigpt5 export --format pretrained --ckpt outputs/mls/checkpoints/last.ckpt --out models/mls \\
      --results outputs/story/results.json

The pretrained folder (:mod:`minigpt5.pretrained`) holds the config with the stage, the
trainable weights, the LoRA adapter in PEFT's layout and a model card with the run's
training settings (from the checkpoint) and the ``--results`` of ``minigpt5 eval``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any, Optional, Union

from lit_models.checkpoint_files import load_checkpoint_file
from lit_models.export import export_trainable
from lit_models.module import MiniGPT5Module


def training_settings(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """What the model card tells of the run: its progress and optimizer settings, and where it started."""
    hparams = checkpoint.get("hyper_parameters") or {}
    optim = hparams.get("optim")
    if dataclasses.is_dataclass(optim):
        optim = dataclasses.asdict(optim)
    settings = {"global_step": checkpoint.get("global_step"), "epoch": checkpoint.get("epoch"),
                "initialised from": hparams.get("init_from"), **{f"optim.{k}": v for k, v in (optim or {}).items()}}
    return {k: v for k, v in settings.items() if v is not None}


def read_results(paths: list[str]) -> list[dict[str, Any]]:
    """``minigpt5 eval``'s results.json files, for the model card."""
    results = []
    for path in paths:
        try:
            results.append(json.loads(Path(path).read_text()))
        except FileNotFoundError as err:
            raise FileNotFoundError(f"results file '{path}' does not exist") from err
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"results file '{path}' is not valid JSON: {err}") from err
        if not isinstance(results[-1], dict) or not isinstance(results[-1].get("rows"), list):
            raise ValueError(f"results file '{path}' is not a `minigpt5 eval` results.json (no list of rows)")
    return results


def export_pretrained(ckpt: Union[str, Path], out: Union[str, Path], results: list[str], allow_pickle: bool = False) -> Path:
    """Write the model of Lightning checkpoint ``ckpt`` as a pretrained folder ``out``; return it."""
    path = Path(ckpt)
    if path.is_dir():
        raise ValueError(f"'{ckpt}' is a folder: --format pretrained reads a Lightning .ckpt file (resume a "
                         "DeepSpeed run for one step under DDP, or use --format safetensors)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{ckpt}' does not exist")
    cards = read_results(results)  # before the model is built: a wrong path fails fast
    settings = training_settings(load_checkpoint_file(path, allow_pickle=allow_pickle, mmap=True))
    model = MiniGPT5Module.from_checkpoint(str(path), allow_pickle=allow_pickle).model
    return model.save_pretrained(out, training={"checkpoint": str(path.resolve()), **settings}, results=cards)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minigpt5 export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="Lightning .ckpt file or DeepSpeed checkpoint folder")
    parser.add_argument("--out", required=True, help="output .safetensors file, or the folder of --format pretrained")
    parser.add_argument("--format", choices=("safetensors", "pretrained"), default="safetensors",
                        help="safetensors: the trainable weights in one file; pretrained: a model folder "
                             "for MiniGPT5.from_pretrained and `minigpt5 generate --model`")
    parser.add_argument("--results", action="append", default=[], metavar="RESULTS_JSON",
                        help="pretrained: a `minigpt5 eval` results.json for the model card (repeatable)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="pretrained: read a checkpoint that holds more than tensors (trusted files only)")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.format == "pretrained":
            folder = export_pretrained(args.ckpt, args.out, args.results, args.allow_pickle)
            print(f"model folder -> {folder} (load it with MiniGPT5.from_pretrained or `minigpt5 generate --model`)")
            return 0
        weights = export_trainable(args.ckpt, args.out)
    except (ValueError, KeyError, FileNotFoundError) as err:  # not a checkpoint, not ours, or absent
        print(f"minigpt5 export: error: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
        return 2
    print(f"{len(weights)} trainable tensors -> {args.out}")
    return 0
