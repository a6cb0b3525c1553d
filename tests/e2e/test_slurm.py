"""SLURM: the cluster overlay and auto-requeue that resumes exactly (SLURM faked in the environment)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Optional

import processes
import pytest
import torch
import yaml
from dist_workers import free_port
from fit_runs import BASE, ROOT, fit_args, trainable_weights
from lightning.pytorch.plugins.environments import SLURMEnvironment

from lit_models.lightning_cli import run_lightning
from lit_models.module import MiniGPT5Module

SLURM = ["-c", str(ROOT / "configs/cluster/slurm.yaml")]
JOB_ID = "4242"


def test_slurm_overlay_builds_an_auto_requeueing_slurm_environment(tmp_path):
    args = BASE + SLURM + [f"--trainer.default_root_dir={tmp_path}", "--data.train_shards=unused"]
    env = run_lightning(MiniGPT5Module, args, run=False).trainer._accelerator_connector.cluster_environment
    assert isinstance(env, SLURMEnvironment)
    assert env.auto_requeue and env.requeue_signal == signal.SIGUSR1


def test_sbatch_example_requeues_and_passes_the_allocation_to_the_trainer():
    script = (ROOT / "configs/cluster/slurm.sbatch").read_text()
    for line in ("#SBATCH --signal=SIGUSR1@90", "#SBATCH --requeue", "srun ", "configs/cluster/slurm.yaml",
                 '--trainer.num_nodes="$SLURM_NNODES"', '--trainer.devices="$SLURM_NTASKS_PER_NODE"'):
        assert line in script
    assert subprocess.run(["bash", "-n", str(ROOT / "configs/cluster/slurm.sbatch")]).returncode == 0


def slurm_overlay(tmp_path: Path, signal_at: int, rank: Optional[int] = None) -> str:
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"every_n_train_steps": 1, "save_top_k": 0, "save_last": True}},
        {"class_path": "kill_switch.SignalAtStep", "init_args": {"step": signal_at, "rank": rank}},
    ]
    path = tmp_path / "slurm_run.yaml"
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks, "enable_progress_bar": False}}))
    return str(path)


def fake_slurm_env(tmp_path: Path, tasks: int = 1, task: int = 0, port: Optional[int] = None) -> dict[str, str]:
    """SLURM task ``task`` of ``tasks`` on one node (as srun starts them), and an ``scontrol``
    on PATH that records what it was asked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT / "tests"),
            "OMP_NUM_THREADS": "1", "SLURM_NTASKS": str(tasks), "SLURM_NTASKS_PER_NODE": str(tasks),
            "SLURM_JOB_NAME": "minigpt5", "SLURM_JOB_ID": JOB_ID, "SLURM_PROCID": str(task), "SLURM_LOCALID": str(task),
            "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost", **({"MASTER_PORT": str(port)} if port else {})}


def slurm_fit(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    result, timed_out = processes.run([sys.executable, "-m", "lit_models.cli", "fit", *args], 600, env, str(ROOT))
    assert not timed_out, f"`minigpt5 fit` did not finish in 600 s:\n{result.stderr[-12000:]}"
    return result


@pytest.mark.slow
def test_sigusr1_mid_step_saves_hpc_checkpoint_requeues_and_resumes_exactly(shards, tmp_path):
    steps, signal_at = 6, 3
    env = fake_slurm_env(tmp_path)
    straight = slurm_fit(fit_args(shards, tmp_path / "a", slurm_overlay(tmp_path, -1), steps) + SLURM, env)
    assert straight.returncode == 0, straight.stderr[-3000:]

    run = fit_args(shards, tmp_path / "b", slurm_overlay(tmp_path, signal_at), steps) + SLURM
    warned = slurm_fit(run, env)
    assert warned.returncode == 0, warned.stderr[-3000:]
    hpc = tmp_path / "b" / "hpc_ckpt_1.ckpt"
    # Saved after the step the signal interrupted, not in the middle of it.
    assert torch.load(hpc, map_location="cpu", weights_only=False)["global_step"] == signal_at + 1
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", JOB_ID]

    requeued = slurm_fit(run, env)  # the same command, as SLURM reruns it: resumes from hpc_ckpt_1
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    a = trainable_weights(tmp_path / "a" / "checkpoints" / "last.ckpt")
    b = trainable_weights(tmp_path / "b" / "checkpoints" / "last.ckpt")
    assert torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == steps
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after the requeue"


def srun2(args: list[str], tmp_path: Path) -> list[subprocess.CompletedProcess]:
    """Both tasks of a 2-task job on one node, started as srun would (Lightning spawns nothing)."""
    port = free_port()
    runs = [processes.Run.start([sys.executable, "-m", "lit_models.cli", "fit", *args],
                                fake_slurm_env(tmp_path, tasks=2, task=task, port=port), str(ROOT)) for task in range(2)]
    results = [run.finish(timeout=600) for run in runs]
    assert not any(run.timed_out for run in runs), "a task did not finish in 600 s:\n" + results[0].stderr[-6000:]
    return results


@pytest.mark.slow
def test_ddp_signal_on_one_rank_requeues_both_at_the_same_step_and_resumes_exactly(shards, tmp_path):
    steps, signal_at = 5, 2
    ddp = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu", "--data.batch_size=2"]
    straight = srun2(fit_args(shards, tmp_path / "a", slurm_overlay(tmp_path, -1), steps) + SLURM + ddp, tmp_path)
    assert all(r.returncode == 0 for r in straight), straight[0].stderr[-3000:] + straight[1].stderr[-3000:]

    # Only rank 1 is warned, mid-step; rank 0 must save at the same step boundary.
    run = fit_args(shards, tmp_path / "b", slurm_overlay(tmp_path, signal_at, rank=1), steps) + SLURM + ddp
    warned = srun2(run, tmp_path)
    assert all(r.returncode == 0 for r in warned), warned[0].stderr[-3000:] + warned[1].stderr[-3000:]
    hpc = torch.load(tmp_path / "b" / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=False)
    assert hpc["global_step"] == signal_at + 1
    assert sorted(hpc["CC3MDataModule"]["stream_position"]["raw"]) == [0, 1]  # both ranks' stream groups
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", JOB_ID]  # once, from rank 0

    requeued = srun2(run, tmp_path)
    assert all(r.returncode == 0 for r in requeued), requeued[0].stderr[-3000:] + requeued[1].stderr[-3000:]
    a = trainable_weights(tmp_path / "a" / "checkpoints" / "last.ckpt")
    b = trainable_weights(tmp_path / "b" / "checkpoints" / "last.ckpt")
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after the requeue"
