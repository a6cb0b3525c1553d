"""Callbacks that break a run under way: its shards, its disk, one rank's loss (used by the fault tests)."""

import errno
import os

from kill_switch import KillDuringSave
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


def _write_some_then_fill_the_disk(obj, f, *args, **kwargs) -> None:
    f.write(b"\0" * 1024)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class DiskFullAtStep(KillDuringSave):
    """The disk fills up part-way through writing the checkpoint saved after optimizer step ``step``."""

    save = staticmethod(_write_some_then_fill_the_disk)


class NaNOnRankAtStep(Callback):
    """Turns the target images of one rank's batch at optimizer step ``step`` into NaN (a corrupt
    batch on one machine), so only that rank's loss is NaN."""

    def __init__(self, step: int, rank: int) -> None:
        self.step, self.rank = step, rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            batch["target_pixels"].fill_(float("nan"))
