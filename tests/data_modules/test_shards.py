"""Shard paths, shard writing, sample decoding and the bad-sample counter."""

from __future__ import annotations

import io
import logging
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from data_modules.shards import (
    BadSample,
    SampleCounter,
    SampleEncoder,
    batches_per_worker,
    decode_sample,
    expand_shards,
)
from data_modules.writer import brace_spec, write_shards
from minigpt5.config import LLMConfig, MiniGPT5Config


def jpeg(colour: str = "red", size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def touch_shards(folder: Path, names: list[str]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return [str(folder / n) for n in names]


def test_expand_brace_directory_and_comma_list(tmp_path):
    train = touch_shards(tmp_path / "a", ["train-000000.tar", "train-000001.tar", "train-000002.tar"])
    other = touch_shards(tmp_path / "b", ["x.tar", "y.tar"])
    (tmp_path / "b" / "notes.txt").write_text("not a shard")

    assert expand_shards(str(tmp_path / "a" / "train-{000000..000002}.tar")) == train
    assert expand_shards(str(tmp_path / "b")) == other  # directory: its *.tar, sorted
    spec = f"{tmp_path}/a/train-{{000000,000002}}.tar, {tmp_path}/b/y.tar"  # comma inside braces kept
    assert expand_shards(spec) == [train[0], train[2], other[1]]


def test_expand_names_every_missing_shard_and_the_spec(tmp_path):
    touch_shards(tmp_path, ["s-000000.tar"])
    spec = str(tmp_path / "s-{000000..000002}.tar")
    with pytest.raises(FileNotFoundError) as err:
        expand_shards(spec)
    message = str(err.value)
    assert "s-000001.tar" in message and "s-000002.tar" in message and spec in message
    assert "s-000000.tar," not in message  # the existing shard is not listed as missing


def test_expand_rejects_empty_spec_and_empty_directory(tmp_path):
    with pytest.raises(ValueError, match="names no shards"):
        expand_shards(" , ")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no .tar"):
        expand_shards(str(tmp_path / "empty"))


def test_write_shards_splits_and_brace_spec_reads_back(tmp_path):
    pattern = str(tmp_path / "part-%06d.tar")
    samples = ({"__key__": f"{i:09d}", "txt": f"caption {i}"} for i in range(5))
    paths = write_shards(pattern, samples, shard_size=2)
    assert [Path(p).name for p in paths] == ["part-000000.tar", "part-000001.tar", "part-000002.tar"]
    assert expand_shards(brace_spec(pattern, len(paths))) == paths
    assert brace_spec(pattern, 1) == str(tmp_path / "part-000000.tar")
    with tarfile.open(paths[0]) as tar:  # one ustar header per member, no PAX header to parse as well
        members = tar.getmembers()
    assert [m.name for m in members] == ["000000000.txt", "000000001.txt"]
    assert all(not m.pax_headers and isinstance(m.mtime, int) for m in members)


def test_write_shards_leaves_no_file_for_no_samples(tmp_path):
    assert write_shards(str(tmp_path / "%06d.tar"), iter([]), shard_size=10) == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "sample, reason",
    [
        ({"txt": b"a red circle"}, "no image"),
        ({"jpg": b"not a jpeg", "txt": b"a red circle"}, "unreadable .jpg image"),
        ({"png": jpeg()[:40], "txt": b"a red circle"}, "unreadable .png image"),  # truncated
        ({"jpg": jpeg()}, "no caption"),
        ({"jpg": jpeg(), "txt": b"  \n"}, "empty caption"),
        ({"jpg": jpeg(), "txt": b"\xff\xfe caption"}, "not UTF-8"),
    ],
)
def test_decode_sample_names_url_and_key(sample, reason):
    sample = {"__key__": "000000042", "__url__": "shards/000003.tar", **sample}
    with pytest.raises(BadSample, match=reason) as err:
        decode_sample(sample)
    assert "shards/000003.tar" in str(err.value) and "000000042" in str(err.value)


def test_decode_sample_reads_any_image_extension():
    image, caption = decode_sample({"webp": _webp(), "txt": b" a blue square \n"})
    assert image.mode == "RGB" and image.size == (8, 8) and caption == "a blue square"


def _webp() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (8, 8), "blue").save(buffer, format="WEBP")
    return buffer.getvalue()


def test_counter_logs_and_counts_bad_samples_and_reraises_others(caplog):
    counter = SampleCounter()
    bad = BadSample({"__url__": "s/000001.tar", "__key__": "000000007"}, "no caption (.txt)")
    with caplog.at_level(logging.WARNING, logger="data_modules.shards"):
        assert counter(bad) is True
        assert counter(bad) is True
    assert counter.bad == 2
    assert "s/000001.tar" in caplog.text and "000000007" in caplog.text and "2 so far" in caplog.text
    with pytest.raises(KeyError):
        counter(KeyError("a bug, not a bad sample"))


def test_encoder_counts_truncated_captions(caplog):
    cfg = MiniGPT5Config(llm=LLMConfig(max_length=17))
    counter = SampleCounter()
    encoder = SampleEncoder(cfg, counter)
    long_caption = " ".join(["a red circle on the left of a big blue square"] * 3).encode()
    with caplog.at_level(logging.WARNING, logger="data_modules.shards"):
        (out,) = encoder({"__key__": "000000001", "__url__": "u.tar", "jpg": jpeg(), "txt": long_caption})
    assert counter.truncated == 1 and "truncated" in caplog.text and "000000001" in caplog.text
    assert len(out["example"].input_ids) == 17


def test_batches_per_worker_splits_the_epoch_over_ranks_and_workers():
    assert batches_per_worker(10000, batch_size=4, world_size=1, num_workers=0) == 2500
    assert batches_per_worker(10000, batch_size=4, world_size=2, num_workers=2) == 625
    assert batches_per_worker(10, batch_size=4, world_size=1, num_workers=2) == 2  # rounded up
    assert batches_per_worker(1, batch_size=64, world_size=8, num_workers=8) == 1
