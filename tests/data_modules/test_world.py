"""The synthetic world's rules, its held-out splits, the shape checker and the rule-based scorer."""

from __future__ import annotations

import io
import json
from collections import Counter

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from data_modules.synthetic import draw_shape, dominant_colour, dominant_shape, write_synthetic
from data_modules.world import (
    COLOURS,
    HARD_PAIRS,
    SHAPES,
    STORY_KINDS,
    WorldTurn,
    all_story_keys,
    dialogue_turns,
    pairs,
    signature,
    stories_in,
    story_split,
    story_turns,
)
from evaluation.world_scores import WorldScores, score_turn
from minigpt5.images import to_pil_images, to_target_tensor


def test_story_rules_shapes_forward_and_back_colour_only_in_pictures_when_unnamed():
    named = story_turns("named", "red", "triangle")
    assert [t.text for t in named] == ["first a red triangle", "then a red circle", "finally a red triangle"]
    unnamed = story_turns("unnamed", "blue", "circle")
    assert [t.text for t in unnamed] == ["first a circle", "then the same colour but a square",
                                         "finally the same colour but a circle"]
    assert all(t.colour == "blue" for t in unnamed)
    assert not any(c in t.text for t in unnamed for c in COLOURS)  # the colour lives only in the pictures
    assert [t.scored for t in unnamed] == [False, True, True]


def test_dialogue_replies_follow_from_the_history():
    rng = np.random.default_rng(0)
    for _ in range(300):
        turns = dialogue_turns(rng, turns=6)
        assert [t.speaker for t in turns] == ["user", "assistant"] * 3
        assert all(t.scored == (t.speaker == "assistant") for t in turns)
        last = turns[1]
        assert last.has_image and last.text.endswith(last.shape)
        for question, reply in zip(turns[2::2], turns[3::2]):
            if question.text == "what colour is it":
                assert reply.text == f"it is {last.colour}" and not reply.has_image
            elif question.text == "what shape is it":
                assert reply.text == f"it is a {last.shape}" and not reply.has_image
            elif question.text.startswith("now a "):
                assert (reply.colour, reply.shape) == (last.colour, question.text.split()[-1]) != (last.colour, last.shape)
            else:
                assert (reply.colour, reply.shape) == (question.text.split()[-1], last.shape) != (last.colour, last.shape)
            assert reply.text == (f"here is a {reply.colour} {reply.shape}" if reply.has_image else reply.text)
            last = reply if reply.has_image else last


def test_story_splits_partition_the_world_and_spread_over_kinds():
    keys = all_story_keys()
    assert sorted(stories_in("train") + stories_in("val") + stories_in("hard")) == sorted(keys)
    val, train = stories_in("val"), stories_in("train")
    assert len(val) == 8 and len(train) == 20
    for kind in STORY_KINDS:  # held out: each kind, all shapes; kept: each kind, every colour and shape
        assert {s for k, _, s in val if k == kind} == set(SHAPES)
        assert {c for k, c, _ in train if k == kind} == set(COLOURS)
        assert {s for k, _, s in train if k == kind} == set(SHAPES)
    for key in stories_in("hard"):
        assert pairs(story_turns(*key)) & HARD_PAIRS
    for key in stories_in("train") + stories_in("val"):
        assert not pairs(story_turns(*key)) & HARD_PAIRS
    assert story_split(("named", "purple", "triangle")) == "hard"
    with pytest.raises(ValueError, match="split must be one of"):
        stories_in("test")


def _records(spec: str) -> list[dict]:
    return [json.loads(s["json"]) for s in wds.WebDataset(spec, shardshuffle=False, empty_check=False)]


def _turns(record: dict) -> list[WorldTurn]:
    fields = record.get("steps", record.get("turns"))
    return [WorldTurn(t["text"], t["speaker"], t["colour"], t["shape"], t["scored"], t["colour_known"]) for t in fields]


@pytest.mark.parametrize("layout", ["stories", "dialogues"])
def test_held_out_items_occur_in_no_training_shard(tmp_path, layout):
    shards = write_synthetic(tmp_path, num=400, val_num=60, hard_num=60, size=16, shard_size=200, layout=layout)
    train = [_turns(r) for r in _records(shards.train)]
    train_signatures = {signature(t) for t in train}
    assert not set().union(*(pairs(t) for t in train)) & HARD_PAIRS  # no held-out pair in any training picture
    for split, spec in (("val", shards.val), ("hard", shards.hard)):
        records = _records(spec)
        assert len(records) == 60 and all(r["world"]["split"] == split for r in records)
        assert not {signature(_turns(r)) for r in records} & train_signatures
        if layout == "stories":  # every held-out story drawn equally often (60 over 8 or 8: 7 or 8 times)
            counts = Counter(signature(_turns(r)) for r in records)
            assert len(counts) == len(stories_in(split)) and max(counts.values()) - min(counts.values()) <= 1
    assert all(pairs(_turns(r)) & HARD_PAIRS for r in _records(shards.hard))


def test_pairs_have_no_hard_split(tmp_path):
    with pytest.raises(ValueError, match="no hard split"):
        write_synthetic(tmp_path, num=4, val_num=0, hard_num=2, layout="pairs")


@pytest.mark.parametrize("noise", [0.0, 0.1, 0.15])
def test_shape_checker_on_ground_truth_at_model_resolution(noise):
    """The checker reads what the tiny model outputs: 16 px images. It must be right on the
    truth, and stay right under the speckle a generated picture has (Gaussian noise of
    ``noise`` on the [-1, 1] scale; 0.15 is about 19 of 255 levels)."""
    rng = np.random.default_rng(11)
    hits = total = 0
    for _ in range(600):
        colour, shape = list(COLOURS)[rng.integers(6)], SHAPES[rng.integers(3)]
        buffer = io.BytesIO()
        draw_shape(colour, shape, 64, rng).save(buffer, format="JPEG", quality=95)
        pixels = to_target_tensor(Image.open(buffer), 16)
        pixels = pixels + noise * torch.from_numpy(rng.standard_normal(pixels.shape).astype(np.float32))
        small = to_pil_images(pixels.clamp(-1, 1)[None])[0]
        hits += dominant_shape(small) == shape and dominant_colour(small) == colour
        total += 1
    assert hits / total >= 0.99 if noise == 0 else hits / total >= 0.97


def test_shape_checker_ignores_a_stray_speck():
    image = draw_shape("red", "circle", 16, np.random.default_rng(0))
    assert dominant_shape(image) == "circle"
    far = (0, 15) if np.asarray(image)[0, 15].mean() > 250 else (15, 0)
    image.putpixel(far, COLOURS["blue"])  # one dark pixel in a corner away from the circle
    assert dominant_shape(image) == "circle"
    assert dominant_shape(draw_shape("red", "square", 16, np.random.default_rng(0))) == "square"
    assert dominant_shape(draw_shape("red", "triangle", 16, np.random.default_rng(0))) == "triangle"


def test_shape_checker_edge_cases():
    assert dominant_shape(Image.new("RGB", (16, 16), "white")) == "none"
    with pytest.raises(ValueError, match="expected an RGB image"):
        dominant_shape(np.zeros((4, 4)))


def _picture(colour: str, shape: str) -> Image.Image:
    return draw_shape(colour, shape, 32, np.random.default_rng(0))


def _rules(turns: list[WorldTurn], upto: int) -> tuple[list[dict], list[str]]:
    return [{"text": t.text, **t.record()} for t in turns[: upto + 1]], [t.text for t in turns[:upto]]


def test_scorer_on_hand_built_turns():
    story = story_turns("unnamed", "green", "square")  # square, triangle, square; green only in pictures
    rules, context = _rules(story, 1)
    right = score_turn(rules, context, "then the same colour but a triangle", [_picture("green", "triangle")])
    assert (right.text_correct, right.colour_right, right.shape_right, right.coherent) == (True, True, True, True)
    assert right.colour_from_image
    wrong_colour = score_turn(rules, context, "then the same colour but a triangle", [_picture("red", "triangle")])
    assert (wrong_colour.colour_right, wrong_colour.shape_right, wrong_colour.coherent) == (False, True, False)
    no_image = score_turn(rules, context, "then the same colour but a triangle", [])
    assert no_image.colour_right is False and no_image.coherent is None and not no_image.produced_image
    wrong_words = score_turn(rules, context, "then a red triangle", [_picture("red", "triangle")])
    assert not wrong_words.text_correct and wrong_words.coherent and not wrong_words.colour_right

    dialogue = [WorldTurn("show me a circle", "user"),
                WorldTurn("here is a circle", "assistant", "blue", "circle", True, colour_known=False),
                WorldTurn("what colour is it", "user"), WorldTurn("it is blue", "assistant", scored=True)]
    rules, context = _rules(dialogue, 1)
    first = score_turn(rules, context, "here is a circle", [_picture("red", "circle")])
    assert first.colour_right is None and first.shape_right  # a colour left to chance is not scored
    rules, context = _rules(dialogue, 3)
    drew_anyway = score_turn(rules, context, "it is blue", [_picture("blue", "circle")])
    assert drew_anyway.text_correct and drew_anyway.produced_image and not drew_anyway.expected_image

    scores = WorldScores()
    for score in (right, wrong_colour, no_image, wrong_words, first, drew_anyway):
        scores.add(score)
    result = scores.result()
    assert result["items"] == 6
    assert result["text_correct"] == {"value": 5 / 6, "hits": 5, "count": 6}
    assert result["image_recall"] == {"value": 0.8, "hits": 4, "count": 5}  # the missing picture
    assert result["image_precision"] == {"value": 0.8, "hits": 4, "count": 5}  # the picture no rule asked for
    assert result["image_f1"] == pytest.approx(0.8)
    assert result["colour_right"] == {"value": 0.25, "hits": 1, "count": 4}  # the chance colour not counted
    assert result["coherence"] == {"value": 0.8, "hits": 4, "count": 5}  # only the red picture of "the same colour"
    assert result["chance"]["colour"] == pytest.approx(1 / 6)


def test_a_correct_story_scores_one_everywhere():
    scores = WorldScores()
    for kind, colour, shape in [("named", "red", "circle"), ("unnamed", "yellow", "triangle")]:
        story = story_turns(kind, colour, shape)
        for t in (1, 2):
            rules, context = _rules(story, t)
            scores.add(score_turn(rules, context, story[t].text, [_picture(story[t].colour, story[t].shape)]))
    result = scores.result()
    for key in ("text_correct", "image_precision", "image_recall", "colour_right", "shape_right", "coherence"):
        assert result[key]["value"] == 1.0, key
    assert result["colour_from_image"]["count"] == 2  # the unnamed story's two steps
    assert result["image_f1"] == 1.0
