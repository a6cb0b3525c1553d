"""A small learnable image-caption set: coloured shapes on white, captioned "a <colour> <shape>".

Used by the demo and the tests; :func:`dominant_colour` checks that generated
images follow their caption's colour.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np
from PIL import Image, ImageDraw

from data_modules.writer import SHARD_NUMBER, brace_spec, write_shards

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 20, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 220, 30),
    "purple": (130, 40, 170),
    "orange": (250, 140, 20),
}
SHAPES = ("circle", "square", "triangle")
WHITE = (255, 255, 255)


def caption_for(colour: str, shape: str) -> str:
    return f"a {colour} {shape}"


def colour_of(caption: str) -> str:
    """The palette colour named in ``caption``; ValueError if there is none."""
    for word in re.findall(r"[a-z]+", caption.lower()):
        if word in COLOURS:
            return word
    raise ValueError(f"caption {caption!r} names none of the colours {sorted(COLOURS)}")


def draw_shape(colour: str, shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One ``shape`` filled with ``colour`` on white; extent 40-80% of ``size``, position jittered."""
    extent = int(rng.uniform(0.4, 0.8) * size)
    x0, y0 = (int(v) for v in rng.integers(0, size - extent + 1, size=2))
    x1, y1 = x0 + extent - 1, y0 + extent - 1
    image = Image.new("RGB", (size, size), WHITE)
    draw = ImageDraw.Draw(image)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) // 2, y0), (x0, y1), (x1, y1)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return image


def random_shape(size: int, rng: np.random.Generator) -> tuple[str, str, bytes]:
    """A random colour and shape, and its JPEG bytes."""
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    shape = SHAPES[rng.integers(len(SHAPES))]
    buffer = io.BytesIO()
    draw_shape(colour, shape, size, rng).save(buffer, format="JPEG", quality=95)
    return colour, shape, buffer.getvalue()


def synthetic_samples(num: int, size: int, seed: int) -> Iterator[dict[str, Any]]:
    """``num`` wds samples (``jpg``, ``txt``, ``json``) with random colour, shape and placement."""
    rng = np.random.default_rng(seed)
    for index in range(num):
        colour, shape, jpeg = random_shape(size, rng)
        yield {
            "__key__": f"{index:09d}",
            "jpg": jpeg,
            "txt": caption_for(colour, shape),
            "json": {"colour": colour, "shape": shape},
        }


STORY_WORDS = ("first", "then", "next", "later", "finally")


def synthetic_stories(num: int, size: int, seed: int, steps: int = 3) -> Iterator[dict[str, Any]]:
    """``num`` stories in the VIST shard layout: steps "first a red circle", "then a blue
    square", ... each with its picture (``json`` + ``0.jpg`` ..)."""
    if not 2 <= steps <= len(STORY_WORDS):
        raise ValueError(f"steps must be in 2..{len(STORY_WORDS)}, got {steps}")
    rng = np.random.default_rng(seed)
    words = STORY_WORDS[: steps - 1] + STORY_WORDS[-1:]
    for index in range(num):
        sample: dict[str, Any] = {"__key__": f"story{index:07d}"}
        record = []
        for step, word in enumerate(words):
            colour, shape, jpeg = random_shape(size, rng)
            sample[f"{step}.jpg"] = jpeg
            record.append({"text": f"{word} {caption_for(colour, shape)}", "image": f"{step}.jpg",
                           "image_id": f"{index}-{step}", "sequence_index": step})
        sample["json"] = {"story_id": f"synthetic-{index}", "steps": record}
        yield sample


def synthetic_dialogues(num: int, size: int, seed: int, turns: int = 4) -> Iterator[dict[str, Any]]:
    """``num`` dialogues in the MMDialog shard layout: a request ("show me a red circle"),
    then a reply with its picture ("here is a red circle" + image), alternating."""
    if turns < 2:
        raise ValueError(f"turns must be >= 2, got {turns}")
    rng = np.random.default_rng(seed)
    for index in range(num):
        sample: dict[str, Any] = {"__key__": f"dialogue{index:07d}"}
        record = []
        for turn in range(0, turns, 2):
            colour, shape, jpeg = random_shape(size, rng)
            record.append({"text": f"show me {caption_for(colour, shape)}", "images": []})
            if turn + 1 < turns:
                sample[f"{turn + 1}.0.jpg"] = jpeg
                record.append({"text": f"here is {caption_for(colour, shape)}", "images": [f"{turn + 1}.0.jpg"]})
        sample["json"] = {"conversation_id": f"synthetic-{index}", "turns": record}
        yield sample


LAYOUTS = {"pairs": synthetic_samples, "stories": synthetic_stories, "dialogues": synthetic_dialogues}


@dataclass
class SyntheticShards:
    """Brace specs of the written shards (``val`` is None when no val samples were asked for)."""

    train: str
    val: Optional[str]


def write_synthetic(
    out: Union[str, Path], num: int = 2000, val_num: int = 200, size: int = 64, seed: int = 0, shard_size: int = 500,
    layout: str = "pairs",
) -> SyntheticShards:
    """Write ``train-%06d.tar`` and ``val-%06d.tar`` shards into ``out``; deterministic given ``seed``.

    ``layout``: "pairs" (CC3M layout), "stories" (3-step shape stories, VIST layout) or
    "dialogues" (MMDialog layout).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
    if num < 1 or val_num < 0 or size < 8 or shard_size < 1:
        raise ValueError(
            f"need num >= 1, val_num >= 0, size >= 8, shard_size >= 1; got {num}, {val_num}, {size}, {shard_size}"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    specs = []
    for split, count, split_seed in (("train", num, seed), ("val", val_num, seed + 1)):
        pattern = str(out / f"{split}-{SHARD_NUMBER}.tar")
        samples = LAYOUTS[layout](count, size, split_seed)
        paths = write_shards(pattern, samples, shard_size)
        specs.append(brace_spec(pattern, len(paths)) if paths else None)
    return SyntheticShards(train=specs[0], val=specs[1])


def dominant_colour(
    image: Union[Image.Image, np.ndarray], white_distance: float = 80.0, min_fraction: float = 0.02
) -> str:
    """Palette colour of most non-white pixels of an RGB image (PIL or (H, W, 3) uint8).

    Pixels further than ``white_distance`` from white vote for their nearest palette
    colour; "none" when fewer than ``min_fraction`` of the pixels do.
    """
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {pixels.shape}")
    pixels = pixels.reshape(-1, 3)  # (H*W, 3)
    coloured = pixels[np.linalg.norm(pixels - np.array(WHITE), axis=1) > white_distance]  # (M, 3)
    if len(coloured) < min_fraction * len(pixels):
        return "none"
    palette = np.array(list(COLOURS.values()), dtype=np.float32)  # (K, 3)
    nearest = np.linalg.norm(coloured[:, None] - palette[None], axis=2).argmin(axis=1)  # (M,)
    return list(COLOURS)[np.bincount(nearest, minlength=len(palette)).argmax()]
