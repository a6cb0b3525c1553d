"""``minigpt5 chat``: an interleaved conversation in the browser (a Gradio app on 127.0.0.1).

  minigpt5 chat --ckpt outputs/demo/mls/checkpoints/last.ckpt --decoding world
  minigpt5 chat --tiny            # an untrained tiny model, for trying the app out

Needs the ``chat`` extra (``pip install -e '.[chat]'``). No public link is made unless
``--share`` is given. Unset decoding flags take the ``--decoding`` preset
(:mod:`minigpt5.decoding`); guidance, diffusion steps, sampler and seed are set per reply
in the page.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

import torch

from lit_models import generate_cli
from lit_models.chat import ChatEngine
from minigpt5.decoding import PRESETS, resolve_decoding
from minigpt5.model import MiniGPT5


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minigpt5 chat", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="FOLDER", help="a model folder written by MiniGPT5.save_pretrained")
    source.add_argument("--ckpt", help="a MiniGPT5Module checkpoint (its config rebuilds the frozen parts)")
    source.add_argument("--tiny", action="store_true", help="an untrained tiny model with a CLIP tower, for trying it out")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="read a checkpoint that holds more than tensors (runs its code: trusted files only)")
    parser.add_argument("--decoding", choices=tuple(PRESETS), default="official",
                        help="preset for the decoding settings (world: greedy, for the demo's checkpoints)")
    parser.add_argument("--max-new-tokens", type=int, help="tokens per reply; default: the preset's")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also make a public gradio.live link")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def load_model(args: argparse.Namespace) -> MiniGPT5:
    """The model behind the chat: a pretrained folder (``--model``), else what ``minigpt5
    generate`` loads (``--ckpt`` or ``--tiny``)."""
    if args.model is None:
        return generate_cli.load_model(args)
    if not hasattr(MiniGPT5, "from_pretrained"):
        raise ValueError("--model needs MiniGPT5.from_pretrained, which this version does not have yet; "
                         "use --ckpt with a training checkpoint")
    return MiniGPT5.from_pretrained(args.model)


def build_engine(args: argparse.Namespace) -> ChatEngine:
    """The model on ``--device`` under the ``--decoding`` preset."""
    gen = resolve_decoding(args.decoding, max_new_tokens=args.max_new_tokens)
    return ChatEngine(load_model(args).to(args.device), gen)


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from lit_models.chat_app import build_app, serve  # before the model loads: Gradio is an optional extra
    except ModuleNotFoundError as err:
        if err.name != "gradio":
            raise
        print("minigpt5 chat: error: the chat needs Gradio: pip install -e '.[chat]' (or make chat)", file=sys.stderr)
        return 2
    try:
        engine = build_engine(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"minigpt5 chat: error: {err}", file=sys.stderr)
        return 2
    serve(build_app(engine), args.host, args.port, args.share)
    return 0


if __name__ == "__main__":
    sys.exit(main())
