"""Callbacks that break the training data while a run is under way (used by the fault tests)."""

import errno
import os

import torch
from lightning.pytorch import Callback


class DeleteFilesAtStep(Callback):
    """Deletes ``paths`` as the batch after optimizer step ``step`` starts, as network storage loses files."""

    def __init__(self, step: int, paths: list[str]) -> None:
        self.step, self.paths = step, paths

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            for path in self.paths:
                if os.path.exists(path):
                    os.remove(path)


class DiskFullAtStep(Callback):
    """The disk fills up half-way through writing the checkpoint saved after optimizer step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Checkpoint callbacks run after this one, so their save meets the patched torch.save.
        if trainer.global_step == self.step:
            torch.save = _write_half_then_fill_the_disk


def _write_half_then_fill_the_disk(obj, f, *args, **kwargs) -> None:
    f.write(b"\0" * 1024)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class NaNOnRankAtStep(Callback):
    """Turns the target images of one rank's batch at optimizer step ``step`` into NaN (a corrupt
    batch on one machine), so only that rank's loss is NaN."""

    def __init__(self, step: int, rank: int) -> None:
        self.step, self.rank = step, rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            batch["target_pixels"].fill_(float("nan"))
