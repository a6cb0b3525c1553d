"""A user's own interleaved jsonl -> story and dialogue shards: the schema, every kind of problem, training batches."""

from __future__ import annotations

import json
import logging

import pytest
from converter_checks import (
    assert_logged, assert_wrong_values_counted, help_text, interleaved_batches, read_shards, write_image,
)

from data_modules.convert.cli import main
from data_modules.convert.interleaved_jsonl import convert_jsonl
from minigpt5.config import LLMConfig, MiniGPT5Config, VisionConfig

CFG = MiniGPT5Config(llm=LLMConfig(max_length=256), vision=VisionConfig(kind="clip"))


def turn(text: str = "", *images: str, speaker: str = "") -> dict:
    return {"text": text, "images": list(images), **({"speaker": speaker} if speaker else {})}


def line(ident, *turns: dict, **extra) -> str:
    return json.dumps({"id": ident, "turns": list(turns), **extra})


@pytest.fixture
def folder(tmp_path):
    """The jsonl's folder, with images under img/ (relative paths resolve against it by default)."""
    for name, colour in [("a.jpg", "red"), ("c.jpg", "blue")]:
        write_image(tmp_path / "data" / "img" / name, colour)
    write_image(tmp_path / "data" / "img" / "b.png", "green", fmt="PNG")
    return tmp_path / "data"


def test_stories_and_dialogues_with_problems_counted_and_logged(tmp_path, folder, caplog):
    elsewhere = tmp_path / "elsewhere" / "d.jpg"
    write_image(elsewhere, "yellow")
    lines = [
        # 1: story; a text-only turn joins the next step; a turn's second image has no text of its own
        line("trip-1", turn("We set off.", "img/a.jpg"), turn("A note."),
             turn("At the lake.", "img/b.png", "img/c.jpg"), turn("Home."), source="my notes"),
        '{"id": 2, "turns": [',  # 2: bad json
        line(3, {"txt": "a typo"}),  # 3: a key the schema lacks
        # 4: dialogue; a missing image dropped from its turn, a turn left empty dropped (its index stays)
        line("chat.1", turn("Show me a red square", speaker="user"),
             turn("Here.", "img/a.jpg", "img/gone.jpg", speaker="assistant"),
             turn("", "img/gone2.jpg", speaker="user"), turn("Thanks", speaker="assistant"), layout="dialogue"),
        line("chat_1", turn("hi"), turn("hello"), layout="dialogue"),  # 5: same key as line 4
        line(6, turn("hello", speaker="assistant"), turn("hi", speaker="user"), layout="dialogue"),  # 6
        line(7, turn("only", "img/gone3.jpg"), turn("x", "img/a.jpg")),  # 7: one step left
        line(8, turn("abs", str(elsewhere)), turn("rel", "img/c.jpg"), layout="story"),  # 8: an absolute path
        line(9, turn("x"), layout="comic"),  # 9: no such layout
    ]
    path = folder / "mine.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="data_modules.convert.interleaved_jsonl"):
        summary = convert_jsonl(path, tmp_path / "out")

    assert (summary.read, summary.written, summary.parts, summary.images) == (9, 3, 7, 5)
    assert dict(summary.problems) == {
        "bad_json": 1, "bad_schema": 2, "image_without_text": 1, "missing_image": 3, "empty_turn": 1,
        "duplicate_id": 1, "bad_speakers": 1, "too_short": 1,
    }
    assert dict(summary.skipped) == {"bad_json": 1, "bad_schema": 2, "duplicate_id": 1, "bad_speakers": 1,
                                     "too_short": 1}
    assert dict(summary.left_out) == {"text_after_last_image": 1}

    assert_logged(caplog.records, [
        (f"{path}:1: id 'trip-1' turn 2 image 'img/c.jpg'", "no text since the previous image"),
        (f"{path}:2", "not valid JSON"),
        (f"{path}:3: id 3", "turn 0: unknown key(s) ['txt']"),
        (f"{path}:4: id 'chat.1' turn 1 image 'img/gone.jpg'", "image not found"),
        (f"{path}:4: id 'chat.1' turn 2", "no text and no usable image"),
        (f"{path}:5: id 'chat_1'", "already taken by line 4"),
        (f"{path}:6: id 6", "turn 0 is the assistant's"),
        (f"{path}:7: id 7", "1 usable steps, want at least 2"),
        (f"{path}:9: id 9", "'layout' must be one of story, dialogue"),
    ])

    story, chat, absolute = read_shards(summary.spec)
    assert (story["__key__"], chat["__key__"], absolute["__key__"]) == ("trip-1", "chat_1", "8")
    assert json.loads(story["json"]) == {"id": "trip-1", "steps": [
        {"text": "We set off.", "image": "0.jpg", "source": "img/a.jpg", "turn": 0},
        {"text": "A note. At the lake.", "image": "1.jpg", "source": "img/b.png", "turn": 2},
    ]}
    assert story["0.jpg"] == (folder / "img" / "a.jpg").read_bytes()
    assert json.loads(chat["json"]) == {"id": "chat.1", "turns": [
        {"text": "Show me a red square", "images": [], "texts": ["Show me a red square"], "media": [], "index": 0},
        {"text": "Here.", "images": ["0.jpg"], "texts": ["Here."], "media": ["0.jpg", None], "index": 1},
        {"text": "Thanks", "images": [], "texts": ["Thanks"], "media": [], "index": 3},
    ]}
    assert absolute["0.jpg"] == elsewhere.read_bytes()

    # Read by the interleaved DataModule: a story's steps after the first, the assistant's turns (1 and 3)
    dm, (batch,) = interleaved_batches(summary.spec, CFG)
    assert batch["input_ids"].shape[0] == 1 + 2 + 1
    assert sorted((batch["input_ids"] == dm.encoder.voken_ids[0]).sum(1).tolist()) == [0, 1, 1, 1]
    assert batch["target_pixels"].shape[0] == 3
    assert dm.counter.bad == 0 and dm.counter.skipped == 0


def test_images_root_layout_default_and_bad_inputs(tmp_path, folder):
    path = tmp_path / "mine.jsonl"  # not beside the images: --images says where they are
    path.write_text(line("s", turn("a", "img/a.jpg"), turn("b", "img/c.jpg")) + "\n"
                    + line("d", turn("q"), turn("r", "img/b.png")) + "\n")
    summary = convert_jsonl(path, tmp_path / "dialogues", images=folder, layout="dialogue")
    assert [list(json.loads(s["json"])) for s in read_shards(summary.spec)] == [["id", "turns"], ["id", "turns"]]
    summary = convert_jsonl(path, tmp_path / "stories", images=folder)  # story by default
    assert (summary.written, dict(summary.skipped)) == (1, {"too_short": 1})  # "q" has no image: one step

    with pytest.raises(FileNotFoundError, match="absent.jsonl"):
        convert_jsonl(tmp_path / "absent.jsonl", tmp_path / "o")
    with pytest.raises(FileNotFoundError, match="no_images"):
        convert_jsonl(path, tmp_path / "o", images=tmp_path / "no_images")
    with pytest.raises(ValueError, match="layout must be one of story, dialogue"):
        convert_jsonl(path, tmp_path / "o", layout="comic")


def test_cli_jsonl(tmp_path, folder, capsys):
    path = folder / "mine.jsonl"
    path.write_text(line("x", turn("q", "img/a.jpg"), turn("a", "img/missing.jpg"), turn("b", "img/c.jpg")))
    assert main(["jsonl", "--documents", str(path), "--out", str(tmp_path / "o"), "--shard-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "documents 1: written 1, skipped 0; 2 steps/turns and 2 images written; problems: missing_image 1" in out
    assert main(["jsonl", "--documents", str(path), "--out", "o", "--images", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
    shown = help_text(["data", "jsonl"], capsys)
    assert all(flag in shown for flag in ("--documents", "--images", "--layout", "--out"))


def test_any_wrong_value_anywhere_is_counted_never_a_traceback(tmp_path, folder):
    good = json.loads(line("good", turn("A.", "img/a.jpg", speaker="user"),
                           turn("B.", "img/c.jpg", speaker="assistant"), layout="dialogue"))
    setters = {
        "id": lambda d, v: d.update(id=v),
        "layout": lambda d, v: d.update(layout=v),
        "turns": lambda d, v: d.update(turns=v),
        "turn": lambda d, v: d["turns"].__setitem__(0, v),
        "image": lambda d, v: d["turns"][0]["images"].__setitem__(0, v),
        **{name: (lambda d, v, name=name: d["turns"][0].__setitem__(name, v))
           for name in ("text", "images", "speaker")},
    }
    assert_wrong_values_counted(good, setters, convert_jsonl, folder)
