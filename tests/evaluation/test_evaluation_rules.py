"""Evaluation building blocks against hand computations: text metrics, clean-fid, the
per-story FID average, the MMDialog image F1, and the items each protocol reads."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from data_modules.convert.cc3m import convert_cc3m
from data_modules.convert.mmdialog import convert_mmdialog
from data_modules.convert.vist import convert_vist
from evaluation.extractors import tiny_extractors
from evaluation.image_metrics import clean_fid, cleanfid_features, frechet_distance, load_cleanfid_inception
from evaluation.items import detect_protocol, read_items
from evaluation.protocols import DialogueScores, Match, clip_f1, mean_of_group_means, per_group_fid
from evaluation.text_metrics import bleu, load_sentence_encoder, rouge_l, sbert_similarity, scoring_text
from minigpt5.loading import WeightsNotFoundError

# ---- text metrics ----


def test_bleu_and_rouge_l_match_hand_counts():
    hyp, ref = "the cat sat on the mat", "the cat is on the mat"
    # Unigrams: 5 of 6 match; bigrams: "the cat", "on the", "the mat" = 3 of 5; equal lengths, no brevity penalty.
    assert bleu(hyp, ref, 1) == pytest.approx(5 / 6, abs=1e-4)
    assert bleu(hyp, ref, 2) == pytest.approx((5 / 6 * 3 / 5) ** 0.5, abs=1e-4)
    # Longest common subsequence "the cat on the mat": 5 of 6 words either way.
    assert rouge_l(hyp, ref) == pytest.approx(5 / 6, abs=1e-4)
    assert bleu("", ref, 1) == 0.0 and rouge_l("dogs", ref) == 0.0


def test_bleu_over_words_or_over_characters_as_the_official_code():
    hyp, ref = "the cat", "the hat"
    # Words: "the" of 2 unigrams, no bigram.
    assert bleu(hyp, ref, 1) == pytest.approx(1 / 2) and bleu(hyp, ref, 2) == 0.0
    # Characters (space included): 6 of 7 unigrams (one "c" unmatched); bigrams th, he, "e ", at of 6.
    assert bleu(hyp, ref, 1, tokens="chars") == pytest.approx(6 / 7)
    assert bleu(hyp, ref, 2, tokens="chars") == pytest.approx((6 / 7 * 4 / 6) ** 0.5)
    # Brevity penalty over the same units: 3 characters against 7.
    assert bleu("the", ref, 1, tokens="chars") == pytest.approx(math.exp(1 - 7 / 3))
    with pytest.raises(ValueError, match="BLEU tokens must be one of"):
        bleu(hyp, ref, 1, tokens="bytes")


def test_scoring_text_as_the_official_mmdialog_scoring_reads_it():
    assert scoring_text("  here it is ") == "here it is"
    assert scoring_text(" ... ") == "" and scoring_text("!?") == ""


def test_sentence_bert_similarity_pools_over_real_tokens_only():
    encoder = tiny_extractors().sentence
    short, long = "a red circle", "then a blue square next to a green triangle on the left"
    same = sbert_similarity(encoder, [short, long], [short, long])
    torch.testing.assert_close(same, torch.ones(2), atol=1e-5, rtol=0)
    # Padding must not change a sentence's embedding: alone vs batched with a longer one.
    torch.testing.assert_close(encoder([short]), encoder([short, long])[:1], atol=1e-5, rtol=1e-5)
    assert float(sbert_similarity(encoder, [short], [long])[0]) < 0.999


def test_missing_sentence_bert_names_the_model():
    with pytest.raises(WeightsNotFoundError, match="all-MiniLM-L6-v2"):
        load_sentence_encoder()


# ---- clean-fid ----


def _pil(seed: int, n: int, shift: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(np.clip(rng.integers(0, 200, (24, 24, 3)) + shift, 0, 255).astype(np.uint8)) for _ in range(n)]


def test_clean_fid_is_the_frechet_distance_of_clean_features():
    def extractor(batch: torch.Tensor) -> torch.Tensor:  # per-channel mean and std of the resized image
        return torch.cat([batch.mean(dim=(2, 3)), batch.std(dim=(2, 3))], dim=1)

    real, fake = _pil(0, 12), _pil(1, 12, shift=50)
    assert clean_fid(real, real, extractor) == pytest.approx(0.0, abs=1e-6)
    got = clean_fid(real, fake, extractor, batch_size=5)
    r = torch.from_numpy(cleanfid_features(real, extractor, 12))
    f = torch.from_numpy(cleanfid_features(fake, extractor, 12))
    assert got > 100  # brightening by 50 moves each channel mean by about 50
    assert got == pytest.approx(frechet_distance(r.mean(0), torch.cov(r.T), f.mean(0), torch.cov(f.T)), rel=1e-4)
    with pytest.raises(ValueError, match="at least 2"):
        clean_fid(real[:1], fake, extractor)


def test_missing_cleanfid_weights_name_the_file(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="inception-2015-12-05.pt"):
        load_cleanfid_inception(str(tmp_path / "inception-2015-12-05.pt"))


# ---- aggregation rules ----


def test_per_story_fid_averages_stories_of_two_or_more():
    groups = ["a", "a", "b", "b", "c"]
    real = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    fake = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 0.0], [0.0, 4.0], [0.0, 0.0]])
    # a: means differ by (1, 0), equal covariances -> 1.
    # b: means (0, 1) vs (0, 2) -> 1; variances 2 and 8 on one axis -> 2 + 8 - 2*sqrt(16) = 2; total 3.
    # c: one step, no covariance: skipped.
    mean, used = per_group_fid(groups, real, fake)
    assert used == 2 and mean == pytest.approx((1 + 3) / 2, abs=1e-6)
    assert per_group_fid(["x"], real[:1], fake[:1]) == (None, 0)


def test_mean_of_group_means_weights_groups_equally():
    assert mean_of_group_means(["a", "a", "b"], [1.0, 3.0, 10.0]) == pytest.approx(6.0)
    assert mean_of_group_means([], []) is None


def _matches(*turns: tuple) -> list[Match]:
    """(generated, referenced[, similarity]) per response -> Match rows."""
    return [Match(bool(t[0]), bool(t[1]), t[2] if len(t) > 2 else 0.0) for t in turns]


@pytest.mark.parametrize("images, expected", [
    ([(1, 1, 0.8), (0, 1), (1, 0)], 0.4),  # P = 0.8/2, R = 0.8/2
    ([(1, 1, 0.5), (0, 1)], 2 * 0.5 * 0.25 / 0.75),  # P = 0.5, R = 0.25
    ([(1, 1, -0.3)], 0.0),  # a dissimilar image scores nothing
    ([(0, 1)], 0.0),  # an image was due and none came
    ([(1, 0)], 0.0),  # an image came where none was due
    ([(0, 0), (0, 0)], None),  # no image either side: nothing to score
])
def test_image_clip_f1_hand_cases(images, expected):
    texts = _matches((1, 1, 0.99), (1, 1, 0.99))  # the image-only F1 never reads the texts
    got = clip_f1(texts, _matches(*images), "image")
    assert got == (None if expected is None else pytest.approx(expected, abs=1e-9))


@pytest.mark.parametrize("texts, images, official, image_only", [
    # Texts and images pooled: hits 0.6 + 0.4 + 0.8, 4 on each side -> P = R = 0.45.
    ([(1, 1, 0.6), (1, 1, 0.4), (0, 0)], [(1, 1, 0.8), (0, 1), (1, 0)], 0.45, 0.4),
    # A negative similarity counts as it is: (0.5 - 0.3) / 2 on each side.
    ([(1, 1, 0.5)], [(1, 1, -0.3)], 0.1, 0.0),
    # No image either side: the texts alone score; the image-only F1 leaves the dialogue out.
    ([(1, 1, 0.7)], [(0, 0)], 0.7, None),
    # Nothing written where a text was due: P = 0.9 / 1, R = 0.9 / 2.
    ([(0, 1)], [(1, 1, 0.9)], 2 * 0.9 * 0.45 / 1.35, 0.9),
    # Nothing on either side: the official code scores 0 (and averages it in).
    ([(0, 0)], [(0, 0)], 0.0, None),
])
def test_clip_f1_official_pools_texts_and_images(texts, images, official, image_only):
    t, i = _matches(*texts), _matches(*images)
    assert clip_f1(t, i, "official") == pytest.approx(official, abs=1e-9)
    assert clip_f1(t, i, "image") == (None if image_only is None else pytest.approx(image_only, abs=1e-9))
    with pytest.raises(ValueError, match="clip_f1 must be one of"):
        clip_f1(t, i, "pooled")


def test_dialogue_clip_f1_averages_over_dialogues_by_definition():
    """A dialogue without images counts (with its texts) officially, and is left out image-only."""
    both = {}
    for definition in ("official", "image"):
        scores = DialogueScores(tiny_extractors(), 16, clip_f1=definition)
        scores.text_matches.update(a=_matches((1, 1, 0.5)), b=_matches((1, 1, 0.3)))
        scores.image_matches.update(a=_matches((1, 1, 0.9)), b=_matches((0, 0)))
        both[definition] = scores.result()
    assert both["official"]["clip_f1"] == pytest.approx(((0.5 + 0.9) / 2 + 0.3) / 2)
    assert both["image"]["clip_f1"] == pytest.approx(0.9)
    assert both["official"]["dialogues_without_images"] == both["image"]["dialogues_without_images"] == 1


# ---- items of each protocol, from the datasets' real sample formats ----


def test_vist_items_every_step_and_last(samples_dir, tmp_path):
    vist = samples_dir / "VIST"
    spec = convert_vist(vist / "val_cleaned.json", vist / "val_image_mapping.json", tmp_path / "vist").spec
    items = list(read_items(spec, "vist"))
    assert [i.step for i in items] == [0, 1, 2, 3, 4]
    assert [len(i.context) for i in items] == [0, 1, 2, 3, 4]
    assert len({i.group for i in items}) == 1 and all(len(i.images) == 1 and i.text for i in items)
    assert items[3].context[2][0] == items[2].text  # the context is the earlier steps, in order
    last = list(read_items(spec, "vist", targets="last"))
    assert [(i.step, len(i.context)) for i in last] == [(4, 4)]
    assert detect_protocol(spec) == "vist"


def test_mmdialog_items_are_responses_after_the_first_turn(samples_dir, tmp_path):
    images = samples_dir / "MMDialog" / "test"
    spec = convert_mmdialog(images / "test_conversations.txt", images, tmp_path / "mmd").spec
    items = list(read_items(spec, "mmdialog"))
    assert [i.step for i in items] == list(range(1, 9))
    assert [len(i.images) for i in items] == [1, 1, 1, 0, 0, 0, 0, 0]  # turns 1..8 of [1,1,1,1,0,0,0,0,0]
    assert [len(i.context) for i in items] == list(range(1, 9))
    assert [i.step for i in read_items(spec, "mmdialog", targets="last")] == [8]
    assert detect_protocol(spec) == "mmdialog"
    assert len(list(read_items(spec, "mmdialog", max_items=3))) == 3
    # the assistant's turns alone (the user speaks first): what data.choices.speakers=assistant trains
    assert [i.step for i in read_items(spec, "mmdialog", speakers="assistant")] == [1, 3, 5, 7]
    assert [i.step for i in read_items(spec, "mmdialog", targets="last", speakers="assistant")] == [7]
    with pytest.raises(ValueError, match="speakers must be one of"):
        next(read_items(spec, "mmdialog", speakers="user"))


def test_cc3m_items_are_caption_image_pairs(samples_dir, tmp_path):
    summary = convert_cc3m(samples_dir / "CC3M" / "cc3m_val.tsv", tmp_path / "cc3m")
    items = list(read_items(summary.spec, "cc3m"))
    assert len(items) == summary.written >= 1
    assert all(i.step == 0 and not i.context and len(i.images) == 1 and i.text for i in items)
    assert detect_protocol(summary.spec) == "cc3m"
    with pytest.raises(ValueError, match="protocol must be one of"):
        next(read_items(summary.spec, "coco"))
