"""Stage-1 fits under a strategy overlay through ``minigpt5 fit``: a few steps, a checkpoint, a resume.

Each run is ``python -m lit_models.cli fit`` in a process of its own, as a user runs it,
with :class:`step_report.StepReport` writing what it did. The second run resumes with
``--ckpt_path last``; the check passes when the checkpoint holds the first run's last
step, the resumed run starts from it and ends, checkpoint included, where it was told.
A run stuck past its time limit gets SIGABRT first, so Python's faulthandler writes every
thread's stack into its log, then SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from lit_models.checkpoint_files import load_checkpoint_file
from lit_models.export import MODEL_STATES, deepspeed_tag_dir

ROOT = Path(__file__).resolve().parents[1]
NEEDS_CUDA = ("deepspeed_zero2", "deepspeed_zero3", "fsdp")  # Lightning refuses these strategies on the CPU


class FitFailed(RuntimeError):
    """A run exited with an error, ran out of time, or did not resume where it should."""


@dataclass
class FitReport:
    """What :class:`step_report.StepReport` wrote for one run."""

    start_step: int
    end_step: int
    step_seconds: list[float]
    peak_bytes: Optional[int]


@dataclass
class StrategyCheck:
    """A strategy's two runs: fitted ``steps``, saved, resumed to twice as many."""

    saved_at: int  # global step in the first run's last.ckpt
    resumed_from: int
    resumed_to: int  # global step in last.ckpt after the resumed run
    step_seconds: float  # median of both runs' steps, each run's first left out
    peak_bytes: Optional[int]  # the larger of the two runs' peaks; None on the CPU
    checkpoint: str  # "file" or "folder" (DeepSpeed)


def strategy_overlay(name: str) -> list[str]:
    """The ``-c`` arguments of ``configs/strategy/<name>.yaml``."""
    return ["-c", str(ROOT / "configs" / "strategy" / f"{name}.yaml")]


def saved_step(ckpt: Path) -> int:
    """The global step a Lightning checkpoint file or a DeepSpeed checkpoint folder was saved at."""
    file = deepspeed_tag_dir(ckpt) / MODEL_STATES if ckpt.is_dir() else ckpt
    return int(load_checkpoint_file(file, mmap=True)["global_step"])


def run_overlay(root: Path, every: int, report: Path) -> Path:
    """A config file: save last.ckpt every ``every`` steps, report the run, no progress bar."""
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"every_n_train_steps": every, "save_top_k": 0, "save_last": True}},
        {"class_path": "step_report.StepReport", "init_args": {"out": str(report)}},
    ]
    path = root / f"{report.stem}.yaml"
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks, "enable_progress_bar": False}}))
    return path


def last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def fit(args: list[str], root: Path, steps: int, every: int, timeout: float, resume: bool = False) -> FitReport:
    """``minigpt5 fit`` with ``args`` for ``steps`` steps in ``root`` (resumed from its last.ckpt if ``resume``)."""
    name = "resume" if resume else "fit"
    root.mkdir(parents=True, exist_ok=True)
    report, log = root / f"{name}.json", root / f"{name}.log"
    command = [sys.executable, "-m", "lit_models.cli", "fit", *args, "-c", str(run_overlay(root, every, report)),
               f"--trainer.max_steps={steps}", f"--trainer.default_root_dir={root}"]
    command += ["--ckpt_path=last"] if resume else []
    paths = [str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "PYTHONFAULTHANDLER": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise FitFailed(f"{name} timed out after {timeout:.0f} s (stacks in {log})") from None
    if proc.returncode != 0:
        raise FitFailed(f"{name} exit code {proc.returncode}: {last_line(log)} (log {log})")
    return FitReport(**json.loads(report.read_text()))


def check_strategy(args: list[str], root: Path, steps: int, timeout: float) -> StrategyCheck:
    """Fit ``steps`` steps, then resume from last.ckpt to ``2 * steps``; raise FitFailed where it went wrong."""
    ckpt = root / "checkpoints" / "last.ckpt"
    first = fit(args, root, steps, steps, timeout)
    saved_at = saved_step(ckpt)
    second = fit(args, root, 2 * steps, steps, timeout, resume=True)
    resumed_to = saved_step(ckpt)
    if (saved_at, second.start_step, second.end_step, resumed_to) != (steps, steps, 2 * steps, 2 * steps):
        raise FitFailed(f"saved at step {saved_at}, resumed from {second.start_step} to {second.end_step}, last.ckpt "
                        f"then at {resumed_to}; expected {steps}, {steps}, {2 * steps}, {2 * steps}")
    peaks = [r.peak_bytes for r in (first, second) if r.peak_bytes is not None]
    return StrategyCheck(
        saved_at=saved_at,
        resumed_from=second.start_step,
        resumed_to=resumed_to,
        step_seconds=statistics.median(first.step_seconds[1:] + second.step_seconds[1:]),
        peak_bytes=max(peaks) if peaks else None,
        checkpoint="folder" if ckpt.is_dir() else "file",
    )
