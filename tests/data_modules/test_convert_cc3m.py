"""CC3M tsv -> shards, on the real sample tsv and on a tsv with every kind of bad row."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from data_modules.convert.cc3m import convert_cc3m
from data_modules.convert.cli import main



def read_shards(spec: str) -> list[dict]:
    return list(wds.WebDataset(spec, shardshuffle=False, empty_check=False))


def test_real_sample_tsv_round_trips(tmp_path, samples_dir):
    sample_tsv = samples_dir / "CC3M" / "cc3m_val.tsv"
    summary = convert_cc3m(sample_tsv, tmp_path / "shards")
    assert (summary.rows, summary.written, summary.missing, summary.corrupt, summary.malformed) == (2, 2, 0, 0, 0)
    assert summary.shards == [str(tmp_path / "shards" / "000000.tar")]

    rows = [line.split("\t") for line in sample_tsv.read_text().splitlines()[1:]]
    samples = read_shards(summary.spec)
    assert [s["__key__"] for s in samples] == ["000000000", "000000001"]
    for sample, (caption, image_path), lineno in zip(samples, rows, (2, 3)):
        assert sample["txt"].decode() == caption
        assert sample["jpg"] == (sample_tsv.parent / image_path).read_bytes()  # JPEG kept byte for byte
        assert json.loads(sample["json"]) == {"caption": caption, "source": image_path, "row": lineno}


def write_image(path: Path, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), "green").save(path, format=fmt)


def test_bad_rows_are_counted_logged_with_line_numbers_and_skipped(tmp_path, caplog):
    write_image(tmp_path / "img" / "good.jpg", "JPEG")
    write_image(tmp_path / "img" / "good.png", "PNG")
    (tmp_path / "img" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole jpeg")
    tsv = tmp_path / "rows.tsv"
    lines = [
        "caption\timage_path",
        "a green box\timg/good.jpg",  # 2: ok
        "a missing picture\timg/nowhere.jpg",  # 3: missing
        "a broken picture\timg/broken.jpg",  # 4: corrupt
        "three\tcolumns\there",  # 5: malformed
        "\timg/good.jpg",  # 6: malformed (empty caption)
        "no tab at all",  # 7: malformed
        "a png picture\timg/good.png",  # 8: ok, re-encoded to JPEG
    ]
    tsv.write_text("\r\n".join(lines))  # CRLF and no trailing newline, like the sample file

    with caplog.at_level(logging.WARNING, logger="data_modules.convert.cc3m"):
        summary = convert_cc3m(tsv, tmp_path / "out")

    assert (summary.rows, summary.written, summary.missing, summary.corrupt, summary.malformed) == (7, 2, 1, 1, 3)
    for lineno, what in [(3, "not found"), (4, "corrupt"), (5, "malformed"), (6, "malformed"), (7, "malformed")]:
        assert any(f"{tsv}:{lineno}:" in r.message and what in r.message for r in caplog.records), (lineno, what)
    assert "written 2, missing 1, corrupt 1, malformed 3" in str(summary)

    samples = read_shards(summary.spec)
    assert [s["txt"].decode() for s in samples] == ["a green box", "a png picture"]
    assert [s["__key__"] for s in samples] == ["000000000", "000000001"]  # running index over written rows
    assert [json.loads(s["json"])["row"] for s in samples] == [2, 8]
    assert Image.open(io.BytesIO(samples[1]["jpg"])).format == "JPEG"


def test_image_root_and_shard_size(tmp_path):
    write_image(tmp_path / "images" / "a.jpg", "JPEG")
    tsv = tmp_path / "meta" / "list.tsv"
    tsv.parent.mkdir()
    tsv.write_text("caption\timage_path\n" + "".join(f"caption {i}\ta.jpg\n" for i in range(3)))
    summary = convert_cc3m(tsv, tmp_path / "out", image_root=tmp_path / "images", shard_size=2)
    assert summary.written == 3 and len(summary.shards) == 2
    assert summary.spec == str(tmp_path / "out" / "{000000..000001}.tar")
    assert len(read_shards(summary.spec)) == 3


def test_wrong_header_is_a_clear_error(tmp_path):
    tsv = tmp_path / "no_header.tsv"
    tsv.write_text("a caption\timg.jpg\n")
    with pytest.raises(ValueError, match=f"{tsv}:1: expected the header"):
        convert_cc3m(tsv, tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.tar"))


def test_cli_subcommands(tmp_path, capsys):
    assert main(["synthetic", "--out", str(tmp_path / "syn"), "--num", "12", "--val-num", "4", "--size", "16"]) == 0
    assert "train shards: " in capsys.readouterr().out
    assert len(read_shards(str(tmp_path / "syn" / "train-000000.tar"))) == 12

    write_image(tmp_path / "a.jpg", "JPEG")
    (tmp_path / "x.tsv").write_text("caption\timage_path\na caption\ta.jpg")
    assert main(["cc3m", "--tsv", str(tmp_path / "x.tsv"), "--out", str(tmp_path / "cc3m"), "--shard-size", "5"]) == 0
    assert "written 1" in capsys.readouterr().out

    assert main(["cc3m", "--tsv", str(tmp_path / "absent.tsv"), "--out", str(tmp_path / "o")]) == 2
    assert "absent.tsv" in capsys.readouterr().err


def test_no_good_rows_writes_no_shard(tmp_path):
    tsv = tmp_path / "bad.tsv"
    tsv.write_text("caption\timage_path\nonly one column\n")
    summary = convert_cc3m(tsv, tmp_path / "out")
    assert (summary.rows, summary.malformed, summary.shards, summary.spec) == (1, 1, [], None)
    assert not list((tmp_path / "out").iterdir())
