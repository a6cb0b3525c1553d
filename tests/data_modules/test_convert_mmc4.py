"""MMC4 documents -> story shards: selection options, every kind of problem, and training batches from the shards."""

from __future__ import annotations

import hashlib
import io
import json
import logging

import pytest
import torch
from PIL import Image
from converter_checks import (
    assert_logged, assert_wrong_values_counted, help_text, interleaved_batches, read_shards, write_image,
)

from data_modules.convert.cli import main
from data_modules.convert.mmc4 import convert_mmc4
from data_modules.turn_choices import TurnChoices
from minigpt5.config import LLMConfig, MiniGPT5Config, VisionConfig
from minigpt5.model import MiniGPT5

CFG = MiniGPT5Config(llm=LLMConfig(max_length=256), vision=VisionConfig(kind="clip"))


def document(url, texts: list[str], *images: tuple[str, int, float], **extra) -> str:
    info = [{"image_name": n, "matched_text_index": i, "matched_sim": s, "raw_url": f"http://img/{n}"}
            for n, i, s in images]
    return json.dumps({"url": url, "text_list": texts, "image_info": info, "similarity_matrix": [], **extra})


def key_of(url: str) -> str:
    return hashlib.sha1(url.encode()).hexdigest()[:16]


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    for name, colour in [("a.jpg", "red"), ("c.jpg", "blue"), ("d.jpg", "yellow")]:
        write_image(folder / name, colour)
    write_image(folder / "b.png", "green", fmt="PNG")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole jpeg")
    return folder


def test_documents_become_stories_and_problems_are_counted_and_logged(tmp_path, images, caplog):
    lines = [
        # 1: images after their matched sentences; one under min_sim (never read); text after the last image
        document("http://x/1", ["Intro.", "The red car.", "Some words.", "The green field.", "The end."],
                 ("b.png", 3, 0.30), ("a.jpg", 1, 0.31), ("low.jpg", 2, 0.10)),
        '{"url": "http://x/2", "text_list": [',  # 2: bad json
        json.dumps({"url": "http://x/3", "text_list": ["x"]}),  # 3: no image_info
        "",  # 4: blank: no record
        # 5: a missing image is dropped, its sentence joins the next step; the document is kept
        document("http://x/5", ["One.", "Two.", "Three.", "Four."], ("gone.jpg", 0, 0.3), ("a.jpg", 1, 0.3),
                 ("c.jpg", 3, 0.3)),
        document("http://x/1", ["Again.", "And again."], ("a.jpg", 0, 0.3), ("c.jpg", 1, 0.3)),  # 6: url repeats
        document("http://x/7", ["A.", "B."], ("gone.jpg", 0, 0.3), ("c.jpg", 1, 0.3)),  # 7: one step left
        # 8: a repeated image_name, an index outside text_list, two images on one sentence, a corrupt image
        document("http://x/8", ["S0.", "S1.", "S2.", "S3."], ("a.jpg", 0, 0.3), ("a.jpg", 2, 0.3),
                 ("zz.jpg", 9, 0.3), ("c.jpg", 1, 0.25), ("d.jpg", 1, 0.35), ("broken.jpg", 2, 0.3),
                 ("b.png", 3, 0.3)),
        json.dumps({"url": "http://x/9", "text_list": ["x"], "image_info": [{"image_name": "a.jpg"}]}),  # 9
    ]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="data_modules.convert.mmc4"):
        summary = convert_mmc4(path, images, tmp_path / "out")

    assert (summary.read, summary.written, summary.parts, summary.images) == (8, 3, 7, 7)
    assert dict(summary.problems) == {
        "bad_json": 1, "missing_key": 2, "missing_image": 2, "duplicate_url": 1, "too_short": 1,
        "duplicate_image": 1, "bad_index": 1, "shared_sentence": 1, "corrupt_image": 1,
    }
    assert dict(summary.skipped) == {"bad_json": 1, "missing_key": 2, "duplicate_url": 1, "too_short": 1}
    assert dict(summary.left_out) == {"below_min_sim": 1, "text_after_last_image": 1}
    assert "documents 8: written 3, skipped 5" in str(summary)
    assert "left out by design: below_min_sim 1, text_after_last_image 1" in str(summary)

    assert_logged(caplog.records, [
        (f"{path}:2", "not valid JSON"),
        (f"{path}:3", "'image_info' must be a list"),
        (f"{path}:5 image 0 'gone.jpg'", "image not found"),
        (f"{path}:6: url 'http://x/1'", f"already taken by {path}:1"),
        (f"{path}:7", "1 usable steps, want at least 2"),
        (f"{path}:8 image 1 'a.jpg'", "image_name repeats"),
        (f"{path}:8 image 2 'zz.jpg'", "matched_text_index 9 outside text_list (4 sentences)"),
        (f"{path}:8 image 4 'd.jpg'", "sentence 1 is also matched by 'c.jpg'"),
        (f"{path}:8 image 5 'broken.jpg'", "corrupt image"),
        (f"{path}:9", "image_info 0: want a string image_name"),
    ])

    first, fifth, eighth = read_shards(summary.spec)
    assert [s["__key__"] for s in (first, fifth, eighth)] == [key_of(f"http://x/{n}") for n in (1, 5, 8)]
    assert json.loads(first["json"]) == {"url": "http://x/1", "steps": [
        {"text": "Intro. The red car.", "image": "0.jpg", "image_name": "a.jpg", "matched_text_index": 1,
         "matched_sim": 0.31},
        {"text": "Some words. The green field.", "image": "1.jpg", "image_name": "b.png", "matched_text_index": 3,
         "matched_sim": 0.30},
    ]}
    assert first["0.jpg"] == (images / "a.jpg").read_bytes()
    assert Image.open(io.BytesIO(first["1.jpg"])).format == "JPEG"  # the PNG, re-encoded
    assert [(s["text"], s["image_name"]) for s in json.loads(fifth["json"])["steps"]] == [
        ("One. Two.", "a.jpg"), ("Three. Four.", "c.jpg")]
    assert [(s["text"], s["image_name"]) for s in json.loads(eighth["json"])["steps"]] == [
        ("S0.", "a.jpg"), ("S1.", "d.jpg"), ("S2. S3.", "b.png")]  # d beats c on sentence 1; S2 lost its image


def test_min_sim_and_max_images_choose_the_steps(tmp_path, images):
    path = tmp_path / "docs.jsonl"
    path.write_text(document("u", ["T0.", "T1.", "T2.", "T3."], ("a.jpg", 0, 0.2), ("c.jpg", 1, 0.3),
                             ("d.jpg", 2, 0.3), ("b.png", 3, 0.3)) + "\n")
    summary = convert_mmc4(path, images, tmp_path / "all", min_sim=0.0, max_images=6)
    assert [s["image_name"] for s in json.loads(read_shards(summary.spec)[0]["json"])["steps"]] == [
        "a.jpg", "c.jpg", "d.jpg", "b.png"]
    summary = convert_mmc4(path, images, tmp_path / "picked", min_sim=0.24, max_images=2)
    (sample,) = read_shards(summary.spec)
    assert [(s["text"], s["image_name"]) for s in json.loads(sample["json"])["steps"]] == [
        ("T0. T1.", "c.jpg"), ("T2.", "d.jpg")]  # a.jpg under min_sim; b.png over max_images
    assert dict(summary.left_out) == {"below_min_sim": 1, "over_max_images": 1, "text_after_last_image": 1}
    assert sorted(k for k in sample if k.endswith(".jpg")) == ["0.jpg", "1.jpg"]

    with pytest.raises(ValueError, match="max_images must be >= 2"):
        convert_mmc4(path, images, tmp_path / "o", max_images=1)
    with pytest.raises(FileNotFoundError, match="absent.jsonl"):
        convert_mmc4([path, tmp_path / "absent.jsonl"], images, tmp_path / "o")
    with pytest.raises(FileNotFoundError, match="no_images"):
        convert_mmc4(path, tmp_path / "no_images", tmp_path / "o")


def test_shards_give_story_batches_that_train(tmp_path, images):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join([
        document("u1", ["A red thing.", "A blue thing.", "A yellow thing."], ("a.jpg", 0, 0.3), ("c.jpg", 1, 0.3),
                 ("d.jpg", 2, 0.3)),
        document("u2", ["Green.", "Red."], ("b.png", 0, 0.3), ("a.jpg", 1, 0.3)),
    ]) + "\n")
    spec = convert_mmc4(path, images, tmp_path / "out").spec
    choices = TurnChoices(story_tasks=["generate", "continue", "understand"])
    dm, (batch,) = interleaved_batches(spec, CFG, choices=choices)
    # generate: every step (3 + 2); continue and understand: every step after the first (2 + 1 each)
    assert batch["input_ids"].shape[0] == 5 + 3 + 3
    assert batch["target_pixels"].shape[0] == 5 + 3  # understand writes text only
    assert dm.counter.bad == 0 and dm.counter.skipped == 0
    torch.manual_seed(0)
    model = MiniGPT5(CFG)
    out = model(batch)
    assert torch.isfinite(out.text) and torch.isfinite(out.ldm)


def test_cli_mmc4(tmp_path, images, capsys):
    path = tmp_path / "docs.jsonl"
    path.write_text(document("u", ["A.", "B.", "C."], ("a.jpg", 0, 0.3), ("c.jpg", 1, 0.1), ("d.jpg", 2, 0.3)))
    args = ["mmc4", "--documents", str(path), str(path), "--images", str(images), "--out", str(tmp_path / "o")]
    assert main(args + ["--min-sim", "0.2", "--max-images", "3"]) == 0
    out = capsys.readouterr().out
    assert "documents 2: written 1, skipped 1 (duplicate_url 1); 2 steps and 2 images written" in out
    assert "below_min_sim 1" in out
    assert main(["mmc4", "--documents", str(tmp_path / "no.jsonl"), "--images", str(images), "--out", "o"]) == 2
    assert "no.jsonl" in capsys.readouterr().err
    shown = help_text(["data", "mmc4"], capsys)
    assert all(flag in shown for flag in ("--documents", "--images", "--min-sim", "--max-images"))


def test_any_wrong_value_anywhere_is_counted_never_a_traceback(tmp_path, images):
    good = json.loads(document("good", ["A.", "B."], ("a.jpg", 0, 0.3), ("c.jpg", 1, 0.3)))
    setters = {
        "url": lambda d, v: d.update(url=v),
        "text_list": lambda d, v: d.update(text_list=v),
        "sentence": lambda d, v: d["text_list"].__setitem__(0, v),
        "image_info": lambda d, v: d.update(image_info=v),
        "entry": lambda d, v: d["image_info"].__setitem__(0, v),
        **{name: (lambda d, v, name=name: d["image_info"][0].__setitem__(name, v))
           for name in ("image_name", "matched_text_index", "matched_sim")},
    }
    assert_wrong_values_counted(good, setters, lambda path, out: convert_mmc4(path, images, out, min_sim=0.0),
                                tmp_path)


def test_a_repeated_url_keeps_the_first_usable_copy(tmp_path, images):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join([
        document("u", ["A."], ("a.jpg", 0, 0.3)),  # too short: leaves the url free
        document("u", ["A.", "B."], ("a.jpg", 0, 0.3), ("c.jpg", 1, 0.3)),  # written
        document("u", ["C.", "D."], ("c.jpg", 0, 0.3), ("d.jpg", 1, 0.3)),  # a duplicate of the written one
    ]) + "\n")
    summary = convert_mmc4(path, images, tmp_path / "out")
    assert (summary.written, dict(summary.skipped)) == (1, {"too_short": 1, "duplicate_url": 1})
    (sample,) = read_shards(summary.spec)
    assert [s["text"] for s in json.loads(sample["json"])["steps"]] == ["A.", "B."]
