"""``minigpt5 chat``: an interleaved conversation in the browser (a Gradio app on 127.0.0.1).

  minigpt5 chat --ckpt outputs/demo/mls/checkpoints/last.ckpt --decoding world
  minigpt5 chat --model models/mls --quantize 8bit --offload    # a model folder or hub id
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

from lit_models import generate_cli
from lit_models.chat import ChatEngine
from lit_models.model_loading import add_inference_arguments
from minigpt5.decoding import PRESETS, resolve_decoding


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minigpt5 chat", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a model folder (`minigpt5 export --format pretrained`) or a hub id holding one")
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
    add_inference_arguments(parser)
    return parser


def build_engine(args: argparse.Namespace) -> ChatEngine:
    """The model ``minigpt5 generate`` would load from the same flags, under the ``--decoding`` preset."""
    gen = resolve_decoding(args.decoding, max_new_tokens=args.max_new_tokens)
    return ChatEngine(generate_cli.load_model(args), gen)


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
