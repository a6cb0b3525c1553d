"""Atomic checkpoint files: a save that dies half-way leaves the previous checkpoint intact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from fit_runs import BASE, cli, fit_args

from lit_models.checkpoint_io import TEMP_SUFFIX, AtomicCheckpointIO, CheckpointWriteError, atomic_torch_save
from lit_models.lightning_cli import run_lightning
from lit_models.module import MiniGPT5Module


def test_a_failed_save_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1}, path)

    def half_then_fail(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(CheckpointWriteError, match=f"could not write checkpoint '{path}': disk full; the previous "
                                                   "file there is untouched"):
        AtomicCheckpointIO().save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_the_cli_saves_atomically_by_default_and_keeps_a_configured_io(tmp_path):
    args = BASE + [f"--trainer.default_root_dir={tmp_path}", "--data.train_shards=unused"]
    built = run_lightning(MiniGPT5Module, args, run=False)
    assert type(built.trainer.strategy.checkpoint_io) is AtomicCheckpointIO
    overlay = tmp_path / "io.yaml"
    overlay.write_text(yaml.safe_dump({"trainer": {"plugins": [
        {"class_path": "lightning.pytorch.plugins.io.TorchCheckpointIO"}]}}))
    built = run_lightning(MiniGPT5Module, args + ["-c", str(overlay)], run=False)
    assert type(built.trainer.strategy.checkpoint_io).__name__ == "TorchCheckpointIO"


def kill_during_save_config(tmp_path: Path, step: int, fault: str = "kill_switch.KillDuringSave") -> str:
    """Only last.ckpt, written every step; ``fault`` (the process dies, by default) strikes half-way
    through writing step ``step``'s."""
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"every_n_train_steps": 1, "save_top_k": 0, "save_last": True}},
        {"class_path": fault, "init_args": {"step": step}},
    ]
    path = tmp_path / "kill_during_save.yaml"
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks, "enable_progress_bar": False}}))
    return str(path)


@pytest.mark.slow
def test_kill_while_saving_last_keeps_the_previous_one_resumable(shards, tmp_path):  # noqa: F811
    root = tmp_path / "run"
    killed = cli(fit_args(shards, root, kill_during_save_config(tmp_path, 3), 5))
    assert killed.returncode == 17, killed.stderr[-3000:]
    last = root / "checkpoints" / "last.ckpt"
    partial = list(last.parent.glob(f".last.ckpt.*{TEMP_SUFFIX}"))
    assert len(partial) == 1, "the killed save should have died in its temporary file"
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 2

    resumed = cli(fit_args(shards, root, kill_during_save_config(tmp_path, -1), 5) + ["--ckpt_path=last"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 5
    assert not list(last.parent.glob(f"*{TEMP_SUFFIX}")), "the stale temporary file was not cleaned up"


@pytest.mark.slow
def test_a_full_disk_during_a_save_names_the_file_and_the_previous_one_resumes(shards, tmp_path):  # noqa: F811
    root = tmp_path / "run"
    full = cli(fit_args(shards, root, kill_during_save_config(tmp_path, 3, "faults.DiskFullAtStep"), 5))
    last = root / "checkpoints" / "last.ckpt"
    assert full.returncode == 2, full.stderr[-3000:]
    line = full.stderr.strip().splitlines()[-1]
    assert line == (f"minigpt5 fit: error: [Errno 28] could not write checkpoint '{last}': No space left on device; "
                    "the previous file there is untouched"), line
    assert "Traceback" not in full.stderr and not list(last.parent.glob(f"*{TEMP_SUFFIX}"))
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 2

    resumed = cli(fit_args(shards, root, kill_during_save_config(tmp_path, -1), 5) + ["--ckpt_path=last"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 5
