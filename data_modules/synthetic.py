"""A small learnable image-caption set: coloured shapes on white, captioned "a <colour> <shape>".

Used by the demo and the tests; :func:`dominant_colour` checks that generated
images follow their caption's colour.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from data_modules.world import COLOURS, SHAPES, Split, WorldTurn, dialogue_in, stories_in, story_turns
from data_modules.writer import SHARD_NUMBER, brace_spec, write_shards
from minigpt5.progress import progress_bar

WHITE = (255, 255, 255)


def caption_for(colour: str, shape: str) -> str:
    return f"a {colour} {shape}"


# Image-caption pairs vary their wording, as CC3M's captions do: a mapper trained on one
# fixed three-word form learns where the words sit, not what they say, and does not carry
# over to stories. (Measured: trained on "a <colour> <shape>" alone, stage 1 followed 97% of
# such captions but drew the colour of "then a blue circle" after a story step at chance.)
CAPTION_TEMPLATES = (
    "a {colour} {shape}",
    "a picture of a {colour} {shape}",
    "a {colour} {shape} on white",
    "we see a {colour} {shape}",
    "the {shape} is {colour}",
    "a {shape} in {colour}",
)


# Half the captions start with a lead-in, as real captions do not all start at the object:
# a mapper that only reads a caption's first words misses "then a red circle".
CAPTION_LEADS = ("then", "first", "finally", "now", "and", "next", "here is", "this is", "look at", "so")


def _first_named(caption: str, words: Iterable[str], what: str) -> str:
    known = set(words)
    for word in re.findall(r"[a-z]+", caption.lower()):
        if word in known:
            return word
    raise ValueError(f"caption {caption!r} names none of the {what} {sorted(known)}")


def colour_of(caption: str) -> str:
    """The palette colour named in ``caption``; ValueError if there is none."""
    return _first_named(caption, COLOURS, "colours")


def shape_of(caption: str) -> str:
    """The shape named in ``caption``; ValueError if there is none."""
    return _first_named(caption, SHAPES, "shapes")


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


def shape_jpeg(colour: str, shape: str, size: int, rng: np.random.Generator) -> bytes:
    """The JPEG bytes of one drawn ``colour`` ``shape`` (placement from ``rng``)."""
    buffer = io.BytesIO()
    draw_shape(colour, shape, size, rng).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def random_shape(size: int, rng: np.random.Generator) -> tuple[str, str, bytes]:
    """A random colour and shape, and its JPEG bytes."""
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    shape = SHAPES[rng.integers(len(SHAPES))]
    return colour, shape, shape_jpeg(colour, shape, size, rng)


def synthetic_samples(num: int, size: int, seed: int) -> Iterator[dict[str, Any]]:
    """``num`` wds samples (``jpg``, ``txt``, ``json``) with random colour, shape, placement and
    caption wording (:data:`CAPTION_TEMPLATES`)."""
    rng = np.random.default_rng(seed)
    for index in range(num):
        colour, shape, jpeg = random_shape(size, rng)
        template = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
        caption = template.format(colour=colour, shape=shape)
        if rng.random() < 0.5:
            caption = f"{CAPTION_LEADS[rng.integers(len(CAPTION_LEADS))]} {caption}"
        yield {
            "__key__": f"{index:09d}",
            "jpg": jpeg,
            "txt": caption,
            "json": {"colour": colour, "shape": shape},
        }


def _draw_turns(sample: dict[str, Any], turns: list[WorldTurn], size: int, rng: np.random.Generator,
                names: list[Optional[str]]) -> None:
    """Draw each turn's picture into ``sample`` under its member name."""
    for turn, name in zip(turns, names):
        if turn.has_image:
            sample[name] = shape_jpeg(turn.colour, turn.shape, size, rng)


def synthetic_stories(num: int, size: int, seed: int, split: Split = "train") -> Iterator[dict[str, Any]]:
    """``num`` stories of ``split`` in the VIST shard layout (``json`` + ``0.jpg`` ..), the
    split's stories (:mod:`data_modules.world`) in turn, so each is drawn equally often
    (a held-out score weighs every story alike); each step's json carries its rule fields
    (speaker, colour, shape, scored)."""
    rng = np.random.default_rng(seed)
    keys = stories_in(split)
    for index in range(num):
        kind, colour, shape = keys[index % len(keys)]
        turns = story_turns(kind, colour, shape)
        names = [f"{step}.jpg" for step in range(len(turns))]
        sample: dict[str, Any] = {"__key__": f"story{index:07d}"}
        _draw_turns(sample, turns, size, rng, names)
        steps = [{"text": t.text, "image": name, "image_id": f"{index}-{i}", "sequence_index": i, **t.record()}
                 for i, (t, name) in enumerate(zip(turns, names))]
        sample["json"] = {"story_id": f"synthetic-{split}-{index}", "world": {"split": split, "kind": kind},
                          "steps": steps}
        yield sample


def synthetic_dialogues(
    num: int, size: int, seed: int, split: Split = "train", turns: int = 4
) -> Iterator[dict[str, Any]]:
    """``num`` dialogues of ``split`` in the MMDialog shard layout (``json`` + ``1.0.jpg`` ..):
    a request and its picture, then rounds of questions answered in words and changes
    answered with a new picture (:mod:`data_modules.world`)."""
    rng = np.random.default_rng(seed)
    for index in range(num):
        dialogue = dialogue_in(split, rng, turns)
        names = [f"{i}.0.jpg" if t.has_image else None for i, t in enumerate(dialogue)]
        sample: dict[str, Any] = {"__key__": f"dialogue{index:07d}"}
        _draw_turns(sample, dialogue, size, rng, names)
        record = [{"text": t.text, "images": [name] if name else [], **t.record()} for t, name in zip(dialogue, names)]
        sample["json"] = {"conversation_id": f"synthetic-{split}-{index}", "world": {"split": split}, "turns": record}
        yield sample


LAYOUTS = ("pairs", "stories", "dialogues")


@dataclass
class SyntheticShards:
    """Brace specs of the written shards (None for a split with no samples asked for).

    ``hard``: stories or dialogues showing a colour x shape pair held out of stage-2
    training (:data:`data_modules.world.HARD_PAIRS`); pairs have no hard split.
    """

    train: str
    val: Optional[str]
    hard: Optional[str] = None


def write_synthetic(
    out: Union[str, Path], num: int = 2000, val_num: int = 200, size: int = 64, seed: int = 0, shard_size: int = 500,
    layout: str = "pairs", hard_num: int = 0, progress: bool = True,
) -> SyntheticShards:
    """Write ``train-%06d.tar``, ``val-%06d.tar`` and (stories, dialogues) ``hard-%06d.tar``
    shards into ``out``; deterministic given ``seed``.

    ``layout``: "pairs" (CC3M layout), "stories" (3-step shape stories, VIST layout) or
    "dialogues" (MMDialog layout). For stories and dialogues the splits are the world's
    (:mod:`data_modules.world`): nothing in ``val`` or ``hard`` occurs in ``train``.
    ``progress``: a bar of the samples made, per split.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
    if num < 1 or val_num < 0 or hard_num < 0 or size < 8 or shard_size < 1:
        raise ValueError(
            "need num >= 1, val_num >= 0, hard_num >= 0, size >= 8, shard_size >= 1; "
            f"got {num}, {val_num}, {hard_num}, {size}, {shard_size}"
        )
    if layout == "pairs" and hard_num:
        raise ValueError("image-caption pairs have no hard split (stage 1 uses every colour x shape pair)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    specs = []
    for offset, (split, count) in enumerate((("train", num), ("val", val_num), ("hard", hard_num))):
        pattern = str(out / f"{split}-{SHARD_NUMBER}.tar")
        if layout == "pairs":
            samples = synthetic_samples(count, size, seed + offset)
        elif layout == "stories":
            samples = synthetic_stories(count, size, seed + offset, split)
        else:
            samples = synthetic_dialogues(count, size, seed + offset, split)
        desc = f"synthetic {layout} {split}"
        paths = write_shards(pattern, progress_bar(samples, desc=desc, unit="sample", total=count, enabled=progress),
                             shard_size) if count else []
        specs.append(brace_spec(pattern, len(paths)) if paths else None)
    return SyntheticShards(train=specs[0], val=specs[1], hard=specs[2])


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


def _coverage(pixels: np.ndarray, white_distance: float) -> np.ndarray:
    """How much of each pixel (H, W) a shape covers: 0 on white, 1 at or beyond ``2 * white_distance``
    from white (edge pixels blended with the white background fall in between)."""
    distance = np.linalg.norm(pixels - np.array(WHITE, dtype=np.float32), axis=-1)  # (H, W)
    return np.clip(distance / (2 * white_distance), 0.0, 1.0)


def _ideal_cover(shape: str, height: int, width: int, subpixels: int = 8) -> np.ndarray:
    """How much of each pixel of a ``height`` x ``width`` box the ideal ``shape`` fills (as
    :func:`draw_shape` draws it: the inscribed ellipse, the box, the triangle with its apex at
    the top centre), sampled ``subpixels`` times a side -> (height, width) in [0, 1]."""
    y = (np.arange(height * subpixels) + 0.5) / (height * subpixels)
    x = (np.arange(width * subpixels) + 0.5) / (width * subpixels)
    y, x = np.meshgrid(y, x, indexing="ij")
    if shape == "circle":
        inside = (y - 0.5) ** 2 + (x - 0.5) ** 2 <= 0.25
    elif shape == "square":
        inside = np.ones_like(y, dtype=bool)
    else:
        inside = np.abs(x - 0.5) <= y / 2
    return inside.reshape(height, subpixels, width, subpixels).mean(axis=(1, 3))


def dominant_shape(
    image: Union[Image.Image, np.ndarray], white_distance: float = 80.0, min_fraction: float = 0.02
) -> str:
    """The shape (circle, square, triangle) of the coloured pixels of an RGB image; "none" when
    fewer than ``min_fraction`` of the pixels are coloured.

    The largest connected patch of pixels more than half covered (:func:`_coverage`) gives the
    shape's box, so stray specks elsewhere do not move it; the shape is the ideal one
    (:func:`_ideal_cover`) whose coverage of that box differs least from the image's.
    Reading the whole box, not a few pixels, keeps it right on generated pictures, whose
    edges are soft and whose white is speckled.
    """
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {pixels.shape}")
    cover = _coverage(pixels, white_distance)  # (H, W)
    solid = cover > 0.5
    if solid.sum() < max(1, min_fraction * cover.size):
        return "none"
    patches, count = ndimage.label(solid)
    largest = 1 + int(np.argmax(ndimage.sum_labels(solid, patches, range(1, count + 1))))
    rows, cols = np.nonzero(patches == largest)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    box = cover[top:bottom, left:right]  # (h, w)
    misfit = {shape: float(np.abs(box - _ideal_cover(shape, *box.shape)).sum()) for shape in SHAPES}
    return min(misfit, key=misfit.get)
