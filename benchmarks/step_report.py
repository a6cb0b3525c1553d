"""A callback that writes what one ``minigpt5 fit`` did, for the GPU check to read back.

    trainer.callbacks: [{class_path: step_report.StepReport, init_args: {out: report.json}}]

(``benchmarks/`` on ``PYTHONPATH``). The JSON file holds the global step the run started
from (after any resume) and ended at, each training step's seconds (forward, backward and
optimizer step, data loading excluded; the device synchronised at both ends) and the peak
GPU memory the process allocated (null on the CPU).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


def synchronize(module: LightningModule) -> None:
    if module.device.type == "cuda":
        torch.cuda.synchronize(module.device)


class StepReport(Callback):
    """Start and end step, step times and peak memory of a fit, written to ``out`` at its end."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.start_step = 0
        self.seconds: list[float] = []
        self._began = 0.0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.start_step = trainer.global_step

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        synchronize(pl_module)
        self._began = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        synchronize(pl_module)
        self.seconds.append(time.perf_counter() - self._began)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        cuda = pl_module.device.type == "cuda"
        report = {
            "start_step": self.start_step,
            "end_step": trainer.global_step,
            "step_seconds": self.seconds,
            "peak_bytes": torch.cuda.max_memory_allocated(pl_module.device) if cuda else None,
        }
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(report))
