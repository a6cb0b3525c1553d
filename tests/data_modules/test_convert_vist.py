"""VIST stories -> shards, on the real sample files and on stories with every kind of problem."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from PIL import Image
from converter_checks import read_shards, write_image

from data_modules.convert.cli import main
from data_modules.convert.common import safe_key
from data_modules.convert.vist import convert_vist

def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data, indent=2))
    return path


def test_real_sample_round_trips_in_sequence_order(tmp_path, samples_dir):
    stories, mapping_path = samples_dir / "VIST" / "val_cleaned.json", samples_dir / "VIST" / "val_image_mapping.json"
    summary = convert_vist(stories, mapping_path, tmp_path / "shards")
    assert (summary.read, summary.written, summary.parts, summary.images) == (1, 1, 5, 5)
    assert (dict(summary.problems), dict(summary.skipped)) == ({}, {})
    assert summary.shards == [str(tmp_path / "shards" / "000000.tar")] == [summary.spec]
    assert "stories 1: written 1, skipped 0; 5 steps and 5 images written; problems: none" in str(summary)

    ((story_id, steps),) = json.loads(stories.read_text()).items()
    mapping = json.loads(mapping_path.read_text())
    steps = sorted(steps, key=lambda s: s["sequence_index"])
    (sample,) = read_shards(summary.spec)
    assert sample["__key__"] == story_id == "40470"
    assert json.loads(sample["json"]) == {
        "story_id": story_id,
        "steps": [
            dict(text=s["caption"], image=f"{n}.jpg", image_id=s["image_id"], sequence_index=s["sequence_index"])
            for n, s in enumerate(steps)
        ],
    }
    for n, step in enumerate(steps):  # JPEGs kept byte for byte, in sequence order
        assert sample[f"{n}.jpg"] == (mapping_path.parent / mapping[step["image_id"]]).read_bytes()
    assert sorted(k for k in sample if not k.startswith("__")) == ["0.jpg", "1.jpg", "2.jpg", "3.jpg", "4.jpg", "json"]


def test_shuffled_steps_are_written_in_sequence_order_and_decode(tmp_path):
    colours = ["red", "green", "blue", "yellow"]
    for colour in colours:
        write_image(tmp_path / "img" / f"{colour}.jpg", colour)
    write_image(tmp_path / "img" / "white.png", "white", "PNG")
    order = [2, 0, 4, 3, 1]  # sequence indexes, as listed in the file
    image_ids = {0: "red", 1: "green", 2: "blue", 3: "yellow", 4: "white"}
    stories = write_json(
        tmp_path / "stories.json",
        {"12.5/x": [{"caption": f"step {i}", "image_id": image_ids[i], "sequence_index": i} for i in order]},
    )
    mapping = write_json(
        tmp_path / "map.json", {c: f"img/{c}.jpg" for c in colours} | {"white": "img/white.png"}
    )
    summary = convert_vist(stories, mapping, tmp_path / "out")
    assert (summary.written, summary.parts, summary.images, dict(summary.problems)) == (1, 5, 5, {})

    (sample,) = read_shards(summary.spec)
    assert sample["__key__"] == safe_key("12.5/x") == "12_5_x"  # no dot or slash in a key
    meta = json.loads(sample["json"])
    assert meta["story_id"] == "12.5/x"
    assert [s["sequence_index"] for s in meta["steps"]] == [0, 1, 2, 3, 4]
    assert [s["text"] for s in meta["steps"]] == [f"step {i}" for i in range(5)]
    assert [s["image_id"] for s in meta["steps"]] == ["red", "green", "blue", "yellow", "white"]
    for n, colour in enumerate(colours):
        assert sample[f"{n}.jpg"] == (tmp_path / "img" / f"{colour}.jpg").read_bytes()
    assert Image.open(io.BytesIO(sample["4.jpg"])).format == "JPEG"  # the PNG, re-encoded

    (decoded,) = read_shards(summary.spec, decode=True)  # "KEY.3.jpg" -> field "3.jpg", decoded as an image
    assert decoded["__key__"] == "12_5_x"
    blue = decoded[meta["steps"][2]["image"]]
    assert isinstance(blue, Image.Image) and blue.getpixel((5, 5))[2] > 200 > blue.getpixel((5, 5))[0]


def test_problem_stories_are_skipped_whole_counted_and_logged(tmp_path, caplog):
    write_image(tmp_path / "a.jpg", "red")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole jpeg")

    def step(i, image_id="a", caption=None):
        return {"caption": f"caption {i}" if caption is None else caption, "image_id": image_id, "sequence_index": i}

    stories = write_json(
        tmp_path / "stories.json",
        {
            "good": [step(1), step(0)],
            "no_mapping": [step(0), step(1, image_id="unmapped")],
            "no_file": [step(0, image_id="gone"), step(1)],
            "corrupt": [step(0), step(1), step(2, image_id="broken")],
            "empty_caption": [step(0), step(1, caption="  ")],
            "dup_index": [step(0), step(1), step(1)],
            "no_steps": [],
            "two_bad": [step(0, caption=""), step(1, image_id="gone")],
            "malformed": [step(0), {"caption": "no image id", "sequence_index": 1}],
            "go.od": [step(0)],  # key "go_od" is free: written
            "go_od": [step(0)],  # same key as "go.od": duplicate
        },
    )
    mapping = write_json(tmp_path / "map.json", {"a": "a.jpg", "gone": "nowhere.jpg", "broken": "broken.jpg"})
    with caplog.at_level(logging.WARNING, logger="data_modules.convert.vist"):
        summary = convert_vist(stories, mapping, tmp_path / "out")

    assert (summary.read, summary.written, summary.parts, summary.images) == (11, 2, 3, 3)
    assert dict(summary.problems) == {
        "missing_mapping": 1,
        "missing_image": 2,
        "corrupt_image": 1,
        "empty_caption": 2,
        "duplicate_index": 1,
        "no_steps": 1,
        "malformed_step": 1,
        "duplicate_story": 1,
    }
    assert dict(summary.skipped) == {  # one reason per story: its first problem
        "missing_mapping": 1,
        "missing_image": 1,
        "corrupt_image": 1,
        "empty_caption": 2,
        "duplicate_index": 1,
        "no_steps": 1,
        "malformed_step": 1,
        "duplicate_story": 1,
    }
    assert "written 2, skipped 9 (corrupt_image 1, duplicate_index 1, duplicate_story 1," in str(summary)

    messages = [r.getMessage() for r in caplog.records]
    for story, where, what in [
        ("no_mapping", "step 1 (sequence_index 1)", "no image path"),
        ("no_file", "step 0 (sequence_index 0)", "not found"),
        ("corrupt", "step 2 (sequence_index 2)", "corrupt image"),
        ("empty_caption", "step 1 (sequence_index 1)", "empty caption"),
        ("dup_index", "step 2 (sequence_index 1)", "repeats step 1"),
        ("two_bad", "step 0 (sequence_index 0)", "empty caption"),
        ("two_bad", "step 1 (sequence_index 1)", "not found"),
        ("malformed", "step 1", "expected an object"),
        ("no_steps", "", "no steps"),
        ("go_od", "", "already taken by story 'go.od'"),
        ("two_bad", "", "skipped: 2 of 2 steps unusable"),
    ]:
        prefix = f"{stories}: story {story!r}"
        assert any(m.startswith(prefix) and where in m and what in m for m in messages), (story, where, what)

    samples = read_shards(summary.spec)
    assert [s["__key__"] for s in samples] == ["good", "go_od"]
    assert [json.loads(s["json"])["story_id"] for s in samples] == ["good", "go.od"]
    assert [t["text"] for t in json.loads(samples[0]["json"])["steps"]] == ["caption 0", "caption 1"]


def test_image_root_shard_size_and_bad_files(tmp_path):
    write_image(tmp_path / "images" / "a.jpg", "red")
    stories = write_json(
        tmp_path / "stories.json", {str(k): [{"caption": "c", "image_id": 7, "sequence_index": 0}] for k in range(3)}
    )
    (tmp_path / "meta").mkdir()
    mapping = write_json(tmp_path / "meta" / "map.json", {"7": "a.jpg"})  # int image ids look up as strings
    summary = convert_vist(stories, mapping, tmp_path / "out", image_root=tmp_path / "images", shard_size=2)
    assert (summary.written, len(summary.shards)) == (3, 2)
    assert summary.spec == str(tmp_path / "out" / "{000000..000001}.tar")
    assert [json.loads(s["json"])["steps"][0]["image_id"] for s in read_shards(summary.spec)] == [7, 7, 7]

    with pytest.raises(FileNotFoundError, match="absent.json"):
        convert_vist(tmp_path / "absent.json", mapping, tmp_path / "o")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        convert_vist(tmp_path / "list.json", mapping, tmp_path / "o")
    with pytest.raises(ValueError, match="shard_size"):
        convert_vist(stories, mapping, tmp_path / "o", shard_size=0)


def test_cli_vist(tmp_path, capsys):
    write_image(tmp_path / "a.jpg", "red")
    stories = write_json(tmp_path / "s.json", {"1": [{"caption": "c", "image_id": "a", "sequence_index": 0}]})
    mapping = write_json(tmp_path / "m.json", {"a": "a.jpg"})
    args = ["vist", "--stories", str(stories), "--images-map", str(mapping), "--out", str(tmp_path / "out")]
    assert main(args + ["--shard-size", "5"]) == 0
    assert "stories 1: written 1" in capsys.readouterr().out
    assert main(["vist", "--stories", str(tmp_path / "no.json"), "--images-map", str(mapping), "--out", "x"]) == 2
    assert "no.json" in capsys.readouterr().err
