"""Two-process DDP training through the CLI on CPU (gloo): exact resumption per rank."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from fit_runs import cli, fit_args, kill_resume_and_compare, run_config, trainable_weights

from data_modules.synthetic import SyntheticShards, synthetic_samples
from data_modules.writer import SHARD_NUMBER, brace_spec, write_shards
from lit_models.module import MiniGPT5Module

DDP = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]


def with_bad_samples(samples, every: int):
    """``samples`` with an undecodable JPEG in every ``every``-th sample (it is skipped and counted)."""
    for index, sample in enumerate(samples):
        if index % every == every - 1:
            sample = {**sample, "jpg": b"not a jpeg"}
        yield sample


BAD_SHARE = "--data.max_bad_share=0.5"  # a third of these shards is corrupt on purpose (the default stops at 0.1)


@pytest.fixture(scope="module")
def shards_with_bad_samples(tmp_path_factory) -> str:
    """64 caption/image samples in 4 shards, every 3rd one corrupt.

    The ranks read different stream groups, so they meet the corrupt samples at different
    times and their positions (raw samples read) differ: rank 1's position, which rank 0
    does not know, must come back from the checkpoint.
    """
    pattern = str(tmp_path_factory.mktemp("bad") / f"train-{SHARD_NUMBER}.tar")
    paths = write_shards(pattern, with_bad_samples(synthetic_samples(64, 16, seed=0), every=3), shard_size=16)
    return brace_spec(pattern, len(paths))


def ddp_args(train: str, root: Path, overlay: str, steps: int) -> list[str]:
    return fit_args(SyntheticShards(train=train, val=None), root, overlay, steps) + DDP + ["--data.batch_size=2",
                                                                                         BAD_SHARE]


@pytest.mark.slow
def test_ddp_killed_run_resumed_from_last_matches_uninterrupted(shards_with_bad_samples, tmp_path):
    # Per rank: 2 workers x 4 batches = 8 batches an epoch; the kill after step 5 is mid-epoch.
    kill_at = 5
    _, ckpt = kill_resume_and_compare(
        lambda root, overlay: ddp_args(shards_with_bad_samples, root, overlay, 7), tmp_path, kill_at
    )
    position = ckpt["CC3MDataModule"]["stream_position"]
    assert position["batches"] == kill_at and sorted(position["raw"]) == [0, 1]  # both ranks' groups
    assert position["raw"][0] != position["raw"][1], "test needs ranks whose positions differ"


def assert_trained_alike(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    init = MiniGPT5Module().state_dict()
    assert got.keys() == want.keys() and len(want) > 0
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5, msg=lambda m: f"{key}: {m}")
        assert not torch.equal(want[key], init[key]), f"{key} did not train"


@pytest.mark.slow
def test_two_ranks_train_like_one_process_with_the_same_global_batch(shards_with_bad_samples, tmp_path):
    # Two stream groups either way: one process reads both (batch 4), or each rank one (batch 2).
    # Adam's step lr * g / (|g| + eps) turns rounding noise into full steps where the true
    # gradient is zero (e.g. attention key biases, which softmax ignores): a larger eps keeps
    # such steps small, so the comparison measures the gradients.
    steps, kill_at, groups = 4, 2, ["--data.stream_groups=2", "--model.optim.eps=1e-4"]

    def one_process(root: Path, overlay: str) -> list[str]:
        return fit_args(SyntheticShards(train=shards_with_bad_samples, val=None), root, overlay, steps) + groups + [
            BAD_SHARE]

    single = cli(one_process(tmp_path / "one", run_config(tmp_path)))
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = cli(ddp_args(shards_with_bad_samples, tmp_path / "two", run_config(tmp_path), steps) + groups)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = trainable_weights(tmp_path / "one" / "checkpoints" / "last.ckpt")
    assert_trained_alike(trainable_weights(tmp_path / "two" / "checkpoints" / "last.ckpt"), one)

    # The same groups resume on another world size: 2 ranks preempted, 1 process carries on.
    killed = cli(ddp_args(shards_with_bad_samples, tmp_path / "moved", run_config(tmp_path, kill_at), steps) + groups)
    assert killed.returncode == 17, killed.stderr[-3000:]
    resumed = cli(one_process(tmp_path / "moved", run_config(tmp_path)) + ["--ckpt_path=last"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_trained_alike(trainable_weights(tmp_path / "moved" / "checkpoints" / "last.ckpt"), one)


@pytest.mark.slow
def test_a_nan_on_one_rank_stops_every_rank_at_that_step_without_its_checkpoint(shards_with_bad_samples, tmp_path):
    overlay = tmp_path / "nan.yaml"
    overlay.write_text(yaml.safe_dump({"trainer": {"enable_progress_bar": False, "callbacks": [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"every_n_train_steps": 1, "save_top_k": -1, "save_last": True}},
        {"class_path": "faults.NaNOnRankAtStep", "init_args": {"step": 3, "rank": 1}}]}}))
    result = cli(ddp_args(shards_with_bad_samples, tmp_path / "run", str(overlay), 8))
    assert result.returncode != 0
    message = ("non-finite training loss at global step 3 (batch 3) on rank(s) [1] of 2 (total per rank: [")
    assert message in result.stderr, result.stderr[-3000:]
    assert "rank 1: non-finite loss terms" in result.stderr  # the bad rank says which term
    steps = sorted(torch.load(p, map_location="cpu", weights_only=False)["global_step"]
                   for p in (tmp_path / "run" / "checkpoints").glob("*.ckpt"))
    assert steps and max(steps) == 3, steps  # saved after steps 1-3; the failed fourth step saved nothing
