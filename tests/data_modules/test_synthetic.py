"""The synthetic coloured-shapes set and the colour classifier used to check samples."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from data_modules.synthetic import (
    CAPTION_LEADS, CAPTION_TEMPLATES, COLOURS, SHAPES, colour_of, dominant_colour, shape_of, write_synthetic,
)
from minigpt5.images import to_pil_images, to_target_tensor


def read(spec: str) -> list[tuple[Image.Image, str]]:
    samples = wds.WebDataset(spec, shardshuffle=False, empty_check=False)
    return [(Image.open(io.BytesIO(s["jpg"])), s["txt"].decode()) for s in samples]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("synthetic"), num=300, val_num=60, size=64, seed=3, shard_size=100)


def test_writes_train_and_val_shards(shards):
    assert shards.train.endswith("train-{000000..000002}.tar") and shards.val.endswith("val-000000.tar")
    train, val = read(shards.train), read(shards.val)
    assert len(train) == 300 and len(val) == 60
    captions = {c for _, c in train}
    named = {(colour_of(c), next(s for s in SHAPES if s in c)) for c in captions}
    assert named == {(c, s) for c in COLOURS for s in SHAPES}  # all 18 pairs appear
    wordings = {t: {t.format(colour=c, shape=s) for c, s in named} for t in CAPTION_TEMPLATES}
    leads = {c.split(" ", 1)[0] for c in captions} & {lead.split()[0] for lead in CAPTION_LEADS}
    bare = {c for c in captions if not any(c.startswith(f"{lead} ") for lead in CAPTION_LEADS)}
    led = {c.split(" ", len(lead.split()))[-1] for c in captions - bare for lead in CAPTION_LEADS
           if c.startswith(f"{lead} ")}
    assert bare | led <= set().union(*wordings.values()) and all(captions & w for w in wordings.values())
    share = sum(c not in bare for _, c in train) / len(train)
    assert 0.4 < share < 0.6 and len(leads) >= 5  # about half of the pairs start with a lead-in
    assert all(image.size == (64, 64) and image.format == "JPEG" for image, _ in train)
    assert [c for _, c in val] != [c for _, c in train[:60]]  # val is drawn with its own seed


def test_deterministic_given_seed(shards, tmp_path):
    again = write_synthetic(tmp_path, num=300, val_num=0, size=64, seed=3, shard_size=100)
    assert again.val is None
    first, second = read(shards.train), read(again.train)
    assert [c for _, c in first] == [c for _, c in second]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for (a, _), (b, _) in zip(first, second))


def test_dominant_colour_matches_captions(shards):
    samples = read(shards.train) + read(shards.val)
    assert all(dominant_colour(image) == colour_of(caption) for image, caption in samples)


def test_dominant_colour_at_model_resolution(shards):
    """What the tiny model sees and outputs: 16 px tensors in [-1, 1] turned back into images."""
    samples = read(shards.val)
    small = to_pil_images(torch.stack([to_target_tensor(image, 16) for image, _ in samples]))  # (N, 3, 16, 16)
    assert all(dominant_colour(np.asarray(im)) == colour_of(c) for im, (_, c) in zip(small, samples))


def test_dominant_colour_none_and_bad_input():
    assert dominant_colour(Image.new("RGB", (32, 32), "white")) == "none"
    almost_white = np.full((32, 32, 3), 255, dtype=np.uint8)
    almost_white[:2, :2] = COLOURS["red"]  # 4 of 1024 pixels
    assert dominant_colour(almost_white) == "none"
    with pytest.raises(ValueError, match="expected an RGB image"):
        dominant_colour(np.zeros((4, 4)))


def test_colour_of_and_shape_of():
    assert colour_of("a purple triangle") == "purple"
    assert colour_of("An Orange circle.") == "orange"
    with pytest.raises(ValueError, match="names none of the colours"):
        colour_of("a black square")
    assert shape_of("the Triangle is purple") == "triangle" and shape_of("then a red circle") == "circle"
    with pytest.raises(ValueError, match="names none of the shapes"):
        shape_of("a red star")
