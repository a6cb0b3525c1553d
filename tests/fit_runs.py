"""``minigpt5 fit`` runs of the tiny preset for the tests: arguments, a test overlay, the CLI in a
subprocess of its own session, and the kill/resume comparison (the ``shards`` fixture they
train on is in ``conftest.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import processes
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]  # the repository
BASE = ["-c", str(ROOT / "configs/uas.yaml"), "-c", str(ROOT / "configs/model/tiny.yaml")]


def run_config(tmp_path: Path, kill_at: int | None = None) -> str:
    """A test overlay: checkpoint every step, small samples grid, optional preemption."""
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"every_n_train_steps": 1, "save_top_k": 1, "save_last": True}},
        {"class_path": "callbacks.samples.SampleGrid",
         "init_args": {"captions": ["a red circle"], "num_seeds": 1, "num_inference_steps": 2, "every_n_steps": 100}},
    ]
    if kill_at is not None:
        callbacks.append({"class_path": "kill_switch.KillAtStep", "init_args": {"step": kill_at}})
    path = tmp_path / f"run{kill_at}.yaml"
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks, "enable_progress_bar": False}}))
    return str(path)


def fit_args(shards, root: Path, overlay: str, steps: int) -> list[str]:
    return BASE + ["-c", overlay, f"--trainer.max_steps={steps}", f"--trainer.default_root_dir={root}",
                   f"--data.train_shards={shards.train}", "--data.batch_size=4", "--data.num_workers=2",
                   "--data.samples_per_epoch=32", "--data.shuffle_buffer=16", "--model.optim.warmup_steps=2"]


def cli(args: list[str], timeout: float = 420) -> subprocess.CompletedProcess:
    """``minigpt5 fit`` in a subprocess of its own session (``tests/processes.py``): the result
    comes when the run's leader exits, and whatever it leaves (DataLoader workers of a killed
    run) is ended. A run stuck past ``timeout`` (a few times its normal time on a loaded
    machine) gets SIGABRT, so every process of it prints its Python stacks through
    faulthandler, and the test fails showing them."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    result, timed_out = processes.run([sys.executable, "-m", "lit_models.cli", "fit", *args], timeout, env, str(ROOT))
    if timed_out:
        fd, path = tempfile.mkstemp(prefix="minigpt5-fit-stacks-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write(result.stderr)  # every process's stacks: the failure message only has room for the end
        pytest.fail(f"`minigpt5 fit` did not finish in {timeout} s; all stacks at SIGABRT in {path}; the last:\n"
                    f"{result.stderr[-12000:]}")
    return result


def trainable_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def kill_resume_and_compare(
    make_args: Callable[[Path, str], list[str]], tmp_path: Path, kill_at: int
) -> tuple[dict[str, torch.Tensor], dict]:
    """Run ``make_args(root, overlay)`` uninterrupted, and again killed after step ``kill_at``
    then resumed with ``--ckpt_path last``; assert both end with bit-identical trainable
    weights. Returns those weights and the checkpoint the killed run left."""
    straight = cli(make_args(tmp_path / "a", run_config(tmp_path)))
    assert straight.returncode == 0, straight.stderr[-3000:]

    killed = cli(make_args(tmp_path / "b", run_config(tmp_path, kill_at)))
    assert killed.returncode == 17, killed.stderr[-3000:]
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    at_kill = torch.load(last, map_location="cpu", weights_only=False)
    assert at_kill["global_step"] == kill_at

    resumed = cli(make_args(tmp_path / "b", run_config(tmp_path)) + ["--ckpt_path=last"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a = trainable_weights(tmp_path / "a" / "checkpoints" / "last.ckpt")
    b = trainable_weights(last)
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    return a, at_kill
