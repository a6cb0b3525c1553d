"""MMDialog conversations -> shards, on the real sample file and on dialogues with every kind of problem."""

from __future__ import annotations

import json
import logging

import pytest
from PIL import Image
from converter_checks import assert_logged, read_shards, write_image

from data_modules.convert.cli import main
from data_modules.convert.mmdialog import convert_mmdialog


def text(value: str) -> dict:
    return {"__TEXT__": value}


def media(value: str) -> dict:
    return {"__MEDIA__": value}


def dialogue(cid, *turns: list[dict]) -> str:
    return json.dumps({"conversation_id": cid, "conversation": [{"turn": list(items)} for items in turns]})


def test_real_sample_round_trips(tmp_path, samples_dir):
    images = samples_dir / "MMDialog" / "test"
    dialogues = images / "test_conversations.txt"
    # What the sample holds, read here independently of the converter.
    records = [json.loads(line) for line in dialogues.read_text().splitlines() if line.strip()]
    turns = [turn["turn"] for record in records for turn in record["conversation"]]
    n_images = sum("__MEDIA__" in item for items in turns for item in items)
    assert (len(records), len(turns), n_images) == (1, 9, 4)

    summary = convert_mmdialog(dialogues, images, tmp_path / "shards")
    assert (summary.read, summary.written, summary.parts, summary.images) == (len(records), 1, len(turns), n_images)
    assert (dict(summary.problems), dict(summary.skipped)) == ({}, {})
    assert "dialogues 1: written 1, skipped 0; 9 turns and 4 images written; problems: none" in str(summary)

    (record,) = records
    (sample,) = read_shards(summary.spec)
    assert sample["__key__"] == str(record["conversation_id"]) == "0"
    meta = json.loads(sample["json"])
    assert meta["conversation_id"] == record["conversation_id"]
    assert len(meta["turns"]) == len(record["conversation"])
    number = 0
    for got, turn in zip(meta["turns"], record["conversation"]):
        assert got["text"] == " ".join(item["__TEXT__"].strip() for item in turn["turn"] if "__TEXT__" in item)
        media_ids = [item["__MEDIA__"] for item in turn["turn"] if "__MEDIA__" in item]
        assert got["images"] == [f"{number + i}.jpg" for i in range(len(media_ids))]  # numbered across the dialogue
        for name, media_id in zip(got["images"], media_ids):
            assert sample[name] == (images / f"{media_id}.jpg").read_bytes()
        number += len(media_ids)
    assert [len(t["images"]) for t in meta["turns"]] == [1, 1, 1, 1, 0, 0, 0, 0, 0]

    (decoded,) = read_shards(summary.spec, decode=True)
    assert all(isinstance(decoded[f"{n}.jpg"], Image.Image) for n in range(n_images))


def test_problems_are_counted_logged_with_line_numbers_and_handled(tmp_path, caplog):
    images = tmp_path / "images"
    for name, colour in [("r", "red"), ("g", "green"), ("b", "blue")]:
        write_image(images / f"{name}.jpg", colour)
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole jpeg")
    lines = [
        # 1: a missing image in a multi-image turn is dropped, order of the others kept; the turn
        # that only had a missing image is dropped as empty
        dialogue(
            "a.1",
            [text("look "), media("r"), media("gone"), text("and this"), media("g")],
            [media("gone2")],
            [media("broken"), media("b")],
            [text("nice")],
        ),
        '{"conversation_id": 2, "conversation": [',  # 2: bad json
        json.dumps({"conversation_id": 3}),  # 3: missing key
        "",  # 4: blank: no record
        dialogue("a_1", [text("hi")], [text("there")]),  # 5: same key as line 1
        dialogue(6, [text("just one turn")], [text("   ")]),  # 6: too short once the empty turn is dropped
        json.dumps({"conversation_id": 7, "conversation": [{"turn": [{"__TEXT__": "x", "__MEDIA__": "r"}]}]}),  # 7
        dialogue(8, [text("hi")], [media("g")]),  # 8: fine, an image-only turn
    ]
    path = tmp_path / "dialogues.txt"
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="data_modules.convert.mmdialog"):
        summary = convert_mmdialog(path, images, tmp_path / "out")

    assert (summary.read, summary.written, summary.parts, summary.images) == (7, 2, 5, 4)
    assert dict(summary.problems) == {
        "missing_image": 2,
        "corrupt_image": 1,
        "empty_turn": 2,
        "bad_json": 1,
        "missing_key": 2,
        "duplicate_id": 1,
        "too_short": 1,
    }
    assert dict(summary.skipped) == {"bad_json": 1, "missing_key": 2, "duplicate_id": 1, "too_short": 1}
    assert "dialogues 7: written 2, skipped 5 (bad_json 1, duplicate_id 1, missing_key 2, too_short 1)" in str(summary)

    assert_logged(caplog.records, [
        (f"{path}:1: conversation 'a.1' turn 0 media 'gone'", "image not found"),
        (f"{path}:1: conversation 'a.1' turn 1 media 'gone2'", "dropped from its turn"),
        (f"{path}:1: conversation 'a.1' turn 1", "turn dropped"),
        (f"{path}:1: conversation 'a.1' turn 2 media 'broken'", "corrupt image"),
        (f"{path}:2", "not valid JSON"),
        (f"{path}:3: conversation 3", "no 'conversation' key"),
        (f"{path}:5: conversation 'a_1'", "already taken by line 1"),
        (f"{path}:6: conversation 6 turn 1", "no text and no usable image"),
        (f"{path}:6: conversation 6", "1 usable turns, want at least 2"),
        (f"{path}:7: conversation 7", "expected {'__TEXT__': text} or {'__MEDIA__': id}"),
    ])

    first, last = read_shards(summary.spec)
    assert (first["__key__"], last["__key__"]) == ("a_1", "8")
    assert json.loads(first["json"]) == {
        "conversation_id": "a.1",
        "turns": [  # texts / media / index keep what the official reading of a turn needs
            {"text": "look and this", "images": ["0.jpg", "1.jpg"], "texts": ["look", "and this"],
             "media": ["0.jpg", None, "1.jpg"], "index": 0},
            # turn 1 (only a missing image) dropped: the next turn's index says so
            {"text": "", "images": ["2.jpg"], "texts": [], "media": [None, "2.jpg"], "index": 2},
            {"text": "nice", "images": [], "texts": ["nice"], "media": [], "index": 3},
        ],
    }
    for name, colour in [("0.jpg", "r"), ("1.jpg", "g"), ("2.jpg", "b")]:
        assert first[name] == (images / f"{colour}.jpg").read_bytes()
    assert json.loads(last["json"]) == {
        "conversation_id": 8,
        "turns": [{"text": "hi", "images": [], "texts": ["hi"], "media": [], "index": 0},
                  {"text": "", "images": ["0.jpg"], "texts": [], "media": ["0.jpg"], "index": 1}],
    }


def test_shard_size_and_bad_inputs(tmp_path):
    write_image(tmp_path / "r.jpg", "red")
    path = tmp_path / "d.txt"
    path.write_text("".join(dialogue(i, [text("q")], [media("r")]) + "\n" for i in range(3)))
    summary = convert_mmdialog(path, tmp_path, tmp_path / "out", shard_size=2)
    assert (summary.written, len(summary.shards)) == (3, 2)
    assert summary.spec == str(tmp_path / "out" / "{000000..000001}.tar")
    assert [s["__key__"] for s in read_shards(summary.spec)] == ["0", "1", "2"]

    with pytest.raises(FileNotFoundError, match="absent.txt"):
        convert_mmdialog(tmp_path / "absent.txt", tmp_path, tmp_path / "o")
    with pytest.raises(FileNotFoundError, match="no_images"):
        convert_mmdialog(path, tmp_path / "no_images", tmp_path / "o")

    (tmp_path / "bad.txt").write_text("not json\n")
    summary = convert_mmdialog(tmp_path / "bad.txt", tmp_path, tmp_path / "empty")
    assert (summary.read, summary.written, summary.shards, summary.spec) == (1, 0, [], None)
    assert not list((tmp_path / "empty").iterdir())


def test_cli_mmdialog(tmp_path, capsys):
    write_image(tmp_path / "r.jpg", "red")
    (tmp_path / "d.txt").write_text(dialogue("x", [text("q"), media("r")], [text("a")]))
    args = ["mmdialog", "--dialogues", str(tmp_path / "d.txt"), "--images", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main(args + ["--shard-size", "3"]) == 0
    assert "dialogues 1: written 1, skipped 0; 2 turns and 1 images written" in capsys.readouterr().out
    assert main(["mmdialog", "--dialogues", str(tmp_path / "no.txt"), "--images", str(tmp_path), "--out", "o"]) == 2
    assert "no.txt" in capsys.readouterr().err
