"""Stage-1 training through the CLI: resume, NaN guard, clear errors, checkpoint contents."""

from __future__ import annotations

import dataclasses
import os
import sys

import processes
import pytest
import torch
import yaml
from fit_runs import BASE, ROOT, cli, fit_args, kill_resume_and_compare, run_config

from lit_models.cli import main
from lit_models.lightning_cli import run_lightning
from lit_models.module import MiniGPT5Module, NonFiniteLossError
from minigpt5.builders import WeightsNotFoundError
from minigpt5.config import ConfigError

@pytest.mark.slow
def test_killed_run_resumed_from_last_matches_uninterrupted(shards, tmp_path):
    # 8 batches per epoch from 2 workers: the kill after step 5 lands mid-epoch, on an odd batch.
    a, _ = kill_resume_and_compare(lambda root, overlay: fit_args(shards, root, overlay, 7), tmp_path, kill_at=5)
    # The run trained: weights moved away from their initial values.
    init = MiniGPT5Module().state_dict()
    assert not torch.equal(a["model.vokens.input_rows"], init["model.vokens.input_rows"])


@pytest.mark.slow
def test_resume_refuses_a_model_change_and_accepts_a_training_change(shards, tmp_path):
    root = tmp_path / "run"
    first = cli(fit_args(shards, root, run_config(tmp_path), 2))
    assert first.returncode == 0, first.stderr[-3000:]
    resume = fit_args(shards, root, run_config(tmp_path), 3) + ["--ckpt_path=last"]
    changed = cli(resume + ["--model.config.mapper.num_heads=2", "--model.config.vokens.num_vokens=4"])
    assert changed.returncode == 2, changed.stderr[-3000:]
    message = changed.stderr.strip().splitlines()[-1]
    assert "mapper.num_heads: 4 -> 2" in message and "vokens.num_vokens: 8 -> 4" in message
    batch = cli(resume + ["--data.batch_size=8"])  # exact resumption: the stream position means batches of 4
    assert batch.returncode == 2, batch.stderr[-3000:]
    assert "global batch (data.batch_size x world size): 4 -> 8" in batch.stderr.strip().splitlines()[-1]
    harmless = cli(resume + ["--model.config.loss.cap_weight=0.2", "--model.config.llm.max_length=48"])
    assert harmless.returncode == 0, harmless.stderr[-3000:]
    assert torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3


def test_model_differences_leave_out_training_settings():
    from minigpt5.config import LossConfig, MapperConfig, model_differences

    base = MiniGPT5Module().config
    assert model_differences(base, dataclasses.replace(base, loss=LossConfig(cap_weight=0.5))) == []
    other = dataclasses.replace(base, mapper=MapperConfig(num_queries=16))
    assert model_differences(dataclasses.asdict(base), other) == ["mapper.num_queries: 77 -> 16"]
    older = dataclasses.asdict(base)
    del older["template"]  # a checkpoint from before a setting existed
    assert model_differences(older, base) == []


@pytest.mark.slow
def test_checkpoint_holds_trainable_weights_logs_and_samples(shards, tmp_path):
    root = tmp_path / "run"
    result = cli(fit_args(shards, root, run_config(tmp_path), 2))
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    module = MiniGPT5Module()
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert set(ckpt["state_dict"]) == trainable
    assert all(k.startswith(("model.vokens.", "model.mapper.")) for k in trainable)
    assert ckpt["optimizer_states"] and ckpt["lr_schedulers"]
    assert ckpt["CC3MDataModule"]["stream_position"]["batches"] == 2  # where the data stream resumes
    assert list(root.glob("events.out.tfevents.*")), "no TensorBoard events in the run directory"
    assert (root / "samples" / "step_000002.png").is_file()


def test_non_finite_loss_stops_training_before_any_checkpoint(shards, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = MiniGPT5Module.model_step

    def poisoned(self, batch, generator=None, text_scale=None):
        total, losses = original(self, batch, generator, text_scale)
        calls["n"] += 1
        if calls["n"] == 3:
            total = total * float("nan")
        return total, losses

    monkeypatch.setattr(MiniGPT5Module, "model_step", poisoned)
    args = ["fit"] + fit_args(shards, tmp_path, run_config(tmp_path), 10) + ["--data.num_workers=0"]
    with pytest.raises(NonFiniteLossError, match="non-finite training loss at global step 2"):
        run_lightning(MiniGPT5Module, args)
    ckpts = sorted((tmp_path / "checkpoints").glob("*.ckpt"))
    assert ckpts, "the steps before the NaN should have been checkpointed"
    for path in ckpts:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        assert ckpt["global_step"] <= 2
        assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_missing_shard_path_is_a_clear_error(tmp_path):
    missing = str(tmp_path / "nowhere" / "train-{000000..000001}.tar")
    with pytest.raises(FileNotFoundError, match="nowhere/train-000000.tar"):
        run_lightning(MiniGPT5Module, ["fit"] + BASE + [f"--data.train_shards={missing}",
                                                         f"--trainer.default_root_dir={tmp_path}"])


def test_bad_config_value_is_one_line_and_exit_code_2(tmp_path):
    """Through the console entry: a user's mistake is one line naming it, not a traceback."""
    args = [sys.executable, "-m", "lit_models.cli", "fit", *BASE, "--model.config.vokens.num_vokens=-1",
            f"--trainer.default_root_dir={tmp_path}"]
    result, _ = processes.run(args, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=str(ROOT))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "minigpt5 fit: error: vokens.num_vokens must be >= 1, got -1"
    with pytest.raises(ConfigError, match=r"guidance.cfg_dropout must be in \[0, 1\), got 1.5"):  # --debug: raised
        main(["fit", "--debug"] + BASE + ["--model.config.guidance.cfg_dropout=1.5",
                                          f"--trainer.default_root_dir={tmp_path}"])


def test_an_unknown_key_or_a_value_of_the_wrong_type_is_one_line_and_exit_code_2(tmp_path):
    """Through the console entry, as jsonargparse words them, without its page of usage."""
    for flag, want in (
        ("--model.config.guidance.scael=2", "minigpt5 fit: error: unrecognized arguments: "
                                            "--model.config.guidance.scael=2 (`minigpt5 fit --help` lists the options)"),
        ("--trainer.max_steps=many", "Expected a <class 'int'>. Got value: many"),
    ):
        args = [sys.executable, "-m", "lit_models.cli", "fit", *BASE, flag, f"--trainer.default_root_dir={tmp_path}"]
        result, _ = processes.run(args, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=str(ROOT))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and "Traceback" not in result.stderr and "usage:" not in result.stderr
        assert lines[-1].startswith("  " + want) or lines[-1] == want, lines[-3:]
        assert any(line.startswith("minigpt5 fit: error: ") for line in lines[-2:])


def test_paper_config_names_the_missing_weights(tmp_path):
    args = ["fit", "-c", str(ROOT / "configs/uas.yaml"), "-c", str(ROOT / "configs/model/paper.yaml"),
            f"--trainer.default_root_dir={tmp_path}"]
    with pytest.raises(WeightsNotFoundError, match="Vision-CAIR/vicuna-7b"):
        run_lightning(MiniGPT5Module, args)


def test_configs_interpolate_in_omegaconf_mode(tmp_path):
    overlay = tmp_path / "interp.yaml"
    overlay.write_text("trainer:\n  max_steps: 7\nmodel:\n  optim:\n    warmup_steps: ${trainer.max_steps}\n")
    cli = run_lightning(MiniGPT5Module, BASE + ["-c", str(overlay), f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert cli.model.optim.warmup_steps == 7
    assert cli.datamodule.model_config == cli.model.config  # linked, so tokenizers match
