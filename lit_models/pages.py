"""HTML pages of generated output: a story from ``minigpt5 generate``, a conversation from
``minigpt5 chat``, and the synthetic world's scored examples from ``minigpt5 eval``.
Self-contained (PNG data URIs).

The model package computes; this module presents (it lives beside the CLIs that write files).
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from PIL import Image

from evaluation.items import EvalItem
from evaluation.world_scores import score_turn
from minigpt5.generate import IMAGE_MARKER, GenerationResult


@dataclass
class OutputPaths:
    html: Path
    record: Path
    images: list[Path] = field(default_factory=list)


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _data_uri(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(_png_bytes(image)).decode("ascii")


def _text_html(text: str) -> str:
    return html.escape(text).replace("\n", "<br>\n")


def _img_html(image: Image.Image, alt: str) -> str:
    alt = html.escape(alt)
    return f'<figure><img src="{_data_uri(image)}" alt="{alt}"><figcaption>{alt}</figcaption></figure>'


_STYLE = """
body { font-family: sans-serif; max-width: 46em; margin: 2em auto; line-height: 1.5; }
figure { display: inline-block; margin: 0.5em 0; }
img { width: 256px; image-rendering: pixelated; border: 1px solid #ccc; }
figcaption { font-size: 0.8em; color: #666; }
.prompt { background: #f4f4f4; padding: 0.5em 1em; }
footer { font-size: 0.8em; color: #666; margin-top: 2em; }
"""


def image_names(result: GenerationResult) -> list[str]:
    """File names of the generated images, in order: ``image_000.png`` .."""
    return [f"image_{i:03d}.png" for i in range(len(result.images))]


def story_record(result: GenerationResult) -> dict[str, Any]:
    """JSON-able summary: segments (text, or the image's file name), settings, seed, tokens."""
    names = iter(image_names(result))
    segments = [{"text": s} if isinstance(s, str) else {"image": next(names)} for s in result.segments]
    return {
        "prompt": result.prompt,
        "num_input_images": len(result.input_images),
        "segments": segments,
        "settings": result.settings,
        "seed": result.settings["seed"],
        "stopped": result.stopped,
        "token_ids": result.token_ids,
    }


def _page(title: str, body: list[str], style: str = _STYLE) -> str:
    """A self-contained HTML page around ``body``."""
    return "\n".join([
        "<!DOCTYPE html>",
        f'<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>',
        f"<style>{style}</style></head><body>",
        *body,
        "</body></html>",
    ])


def _request_html(text: str, images: list[Image.Image]) -> list[str]:
    """What the user gave: ``text`` with each ``<image>`` marker replaced by the next image, in
    order; images without a marker follow the text."""
    parts: list[str] = []
    inputs = iter(images)
    for i, piece in enumerate(text.split(IMAGE_MARKER)):
        if i > 0:
            parts.append(_img_html(next(inputs), f"input image {i}"))
        if piece:
            parts.append(_text_html(piece))
    return parts + [_img_html(image, "input image") for image in inputs]


def _generated_html(result: GenerationResult, names: list[str]) -> list[str]:
    """The generated text and images in order (images captioned by ``names``), then the settings."""
    images = iter(names)
    parts = [f"<p>{_text_html(s)}</p>" if isinstance(s, str) else _img_html(s, next(images)) for s in result.segments]
    settings = ", ".join(f"{k}={v}" for k, v in result.settings.items())
    return parts + [f"<footer>stopped at {html.escape(result.stopped)}; {html.escape(settings)}</footer>"]


def story_html(result: GenerationResult) -> str:
    """A self-contained HTML page: the prompt, then text and images in order (PNG data URIs)."""
    return _page("MiniGPT-5 story", [
        '<h2>Prompt</h2><div class="prompt">', *_request_html(result.prompt, result.input_images), "</div>",
        "<h2>Story</h2>", *_generated_html(result, image_names(result)),
    ])


def conversation_html(exchanges: list[tuple[str, list[Image.Image], GenerationResult]]) -> str:
    """A chat as one self-contained page, styled as :func:`story_html`: each exchange's message
    (text and attached images), then the model's reply and its settings."""
    body: list[str] = []
    for turn, (text, images, result) in enumerate(exchanges, start=1):
        names = [f"turn {turn}, image {i}" for i in range(1, len(result.images) + 1)]
        body += [f'<h2>You ({turn})</h2><div class="prompt">', *_request_html(text, images), "</div>",
                 f"<h2>MiniGPT-5 ({turn})</h2>", *_generated_html(result, names)]
    return _page("MiniGPT-5 chat", body)


def write_outputs(result: GenerationResult, out_dir: Union[str, Path]) -> OutputPaths:
    """Write ``image_000.png`` .., ``story.html`` (self-contained) and ``record.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = OutputPaths(html=out / "story.html", record=out / "record.json")
    for image, name in zip(result.images, image_names(result)):
        path = out / name
        path.write_bytes(_png_bytes(image))
        paths.images.append(path)
    paths.html.write_text(story_html(result), encoding="utf-8")
    paths.record.write_text(json.dumps(story_record(result), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return paths


def _mark(ok: object) -> str:
    return "–" if ok is None else ("✓" if ok else "✗")


def world_examples_html(title: str, examples: list[tuple[EvalItem, list[Image.Image], str]], summary: str) -> str:
    """A page of scored synthetic-world turns: the context, what the model wrote and drew,
    what the rules expected, and each score (✓ right, ✗ wrong, – not scored)."""
    rows = []
    for item, images, text in examples:
        score = score_turn(item.rules, [t for t, _ in item.context], text, images)
        context = " ".join(
            _text_html(t) + "".join(_img_html(im, "context") for im in ims) for t, ims in item.context
        )
        target = item.rules[-1]
        expected = _text_html(target["text"]) + (
            f"<br><small>picture: {html.escape(str(target['colour']) if target.get('colour_known', True) else 'any')}"
            f" {html.escape(str(target['shape']))}</small>" if target.get("shape") else "<br><small>no picture</small>"
        )
        written = _text_html(text) + "".join(_img_html(im, "generated") for im in images[:1])
        marks = (f"text {_mark(score.text_correct)}<br>picture {_mark(score.expected_image == score.produced_image)}"
                 f"<br>colour {_mark(score.colour_right)}<br>shape {_mark(score.shape_right)}"
                 f"<br>coherent {_mark(score.coherent)}")
        rows.append(f"<tr><td>{context}</td><td>{written}</td><td>{expected}</td><td>{marks}</td></tr>")
    return _page(title, [
        f"<h2>{html.escape(title)}</h2>", f'<div class="prompt">{_text_html(summary)}</div>',
        "<table><tr><th>context</th><th>the model wrote</th><th>the rules expect</th><th>scores</th></tr>",
        *rows, "</table>",
    ], style=_STYLE + _TABLE_STYLE)


_TABLE_STYLE = """
table { border-collapse: collapse; margin-top: 1em; }
td, th { border: 1px solid #ddd; padding: 0.4em; vertical-align: top; text-align: left; }
td img { width: 64px; }
"""
