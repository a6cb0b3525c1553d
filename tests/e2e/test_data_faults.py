"""Training data that breaks under a run (real `minigpt5 fit`): truncated and vanishing shards are
skipped, logged and counted into the checkpoint; data that is mostly bad stops the run clearly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml
from fit_runs import BASE, cli

from data_modules.shard_reader import ShardError, read_shard
from data_modules.stream import DataFaultError, DataFaults
from data_modules.synthetic import synthetic_samples
from data_modules.writer import write_shards


def truncate(path: str, keep: float) -> None:
    """Cut the file to ``keep`` of its length (inside a member for the shards written here)."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))


def overlay(tmp_path: Path, callbacks: list[dict]) -> str:
    path = tmp_path / "faults.yaml"
    every_step = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"every_n_train_steps": 1, "save_top_k": 1, "save_last": True}}
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": [every_step, *callbacks], "enable_progress_bar": False}}))
    return str(path)


def fit(spec: str, root: Path, config: str, steps: int, *extra: str):
    return cli(BASE + ["-c", config, f"--trainer.max_steps={steps}", f"--trainer.default_root_dir={root}",
                       f"--data.train_shards={spec}", "--data.batch_size=4", "--data.num_workers=2",
                       "--data.samples_per_epoch=64", "--data.shuffle_buffer=4", "--model.optim.warmup_steps=2",
                       *extra])


def test_a_truncated_shard_gives_its_whole_samples_then_says_where_it_stops(tmp_path):
    (path,) = write_shards(str(tmp_path / "s-%06d.tar"), synthetic_samples(8, 16, seed=0), shard_size=8)
    whole = [s["__key__"] for s in read_shard(path)]
    truncate(path, 0.5)
    got = []
    with pytest.raises(ShardError, match=f"shard '{path}' (is truncated|cannot be read to its end)"):
        for sample in read_shard(path):
            got.append(sample["__key__"])
    assert 0 < len(got) < len(whole) and got == whole[:len(got)]
    os.remove(path)
    with pytest.raises(ShardError, match="is gone"):
        list(read_shard(path))


def test_bad_share_is_checked_once_enough_samples_were_read():
    DataFaults(read=49, bad_samples=40).check(0.1)  # too few read to judge
    DataFaults(read=100, bad_samples=10).check(0.1)  # at the limit
    with pytest.raises(DataFaultError, match=r"11 of 100 training samples were bad \(11%\), more than "
                                             r"data.max_bad_share=0.1; 2 shards were cut short"):
        DataFaults(read=100, bad_samples=11, bad_shards=2).check(0.1)


@pytest.mark.slow
def test_fit_goes_on_past_truncated_and_vanished_shards_and_counts_them_into_the_checkpoint(tmp_path):
    (tmp_path / "shards").mkdir()
    paths = write_shards(str(tmp_path / "shards" / "train-%06d.tar"), synthetic_samples(64, 16, seed=0), shard_size=8)
    for path in paths[1:4]:
        truncate(path, 0.5)  # about half of each is lost
    gone = paths[4:]  # deleted after step 2, while the workers read
    config = overlay(tmp_path, [{"class_path": "faults.DeleteFilesAtStep", "init_args": {"step": 2, "paths": gone}}])
    spec = str(tmp_path / "shards" / "train-{000000..000007}.tar")
    result = fit(spec, tmp_path / "run", config, 12)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stderr
    assert any(f"shard '{p}' is truncated" in log or f"shard '{p}' cannot be read to its end" in log
               for p in paths[1:4]), log[-3000:]
    assert any(f"shard '{p}' is gone" in log for p in gone), log[-3000:]
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 12
    faults = ckpt["CC3MDataModule"]["data_faults"]
    logged_shards = log.count("skipped the rest of a shard")
    assert faults["bad_samples"] == 0 and 2 <= faults["bad_shards"] <= logged_shards, (faults, logged_shards)
    assert faults["read"] >= 12 * 4  # every step's batch, from the shards that were left
    assert f"{faults['bad_shards']} shards cut short" in log  # the count is logged with each checkpoint


def with_every_other_image_broken(samples):
    for index, sample in enumerate(samples):
        yield {**sample, "jpg": b"not a jpeg"} if index % 2 else sample


@pytest.mark.slow
def test_fit_stops_with_one_clear_line_when_more_than_the_allowed_share_is_bad(tmp_path):
    (tmp_path / "shards").mkdir()
    write_shards(str(tmp_path / "shards" / "train-%06d.tar"), with_every_other_image_broken(
        synthetic_samples(64, 16, seed=0)), shard_size=16)
    spec = str(tmp_path / "shards" / "train-{000000..000003}.tar")
    result = fit(spec, tmp_path / "run", overlay(tmp_path, []), 40, "--data.max_bad_share=0.2")
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("minigpt5 fit: error: ") and "training samples were bad" in last, last
    assert "more than data.max_bad_share=0.2" in last and "Traceback" not in result.stderr
