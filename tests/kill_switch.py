"""Callbacks that end the process abruptly, like a preempted job (used by the training tests)."""

import io
import os
import signal
from typing import Optional

import torch
from lightning.pytorch import Callback

_torch_save = torch.save


class KillAtStep(Callback):
    """``os._exit`` as the batch after optimizer step ``step`` starts: no teardown, no saving."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os._exit(17)


def _write_half_then_die(obj, f, *args, **kwargs) -> None:
    buffer = io.BytesIO()
    _torch_save(obj, buffer, *args, **kwargs)
    data = buffer.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    os._exit(17)


class KillDuringSave(Callback):
    """Dies half-way through writing the checkpoint saved after optimizer step ``step``
    (subclasses strike differently: ``save`` replaces ``torch.save`` for that write)."""

    save = staticmethod(_write_half_then_die)

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Checkpoint callbacks run after this one, so their save meets the patched torch.save.
        if trainer.global_step == self.step:
            torch.save = self.save


class SignalAtStep(Callback):
    """Sends ``signum`` (default SIGUSR1, SLURM's warning) to this process mid-step, before
    the backward pass of optimizer step ``step``, as SLURM would at an arbitrary moment;
    only on global rank ``rank`` when given (the others must follow)."""

    def __init__(self, step: int, signum: int = int(signal.SIGUSR1), rank: Optional[int] = None) -> None:
        self.step, self.signum, self.rank = step, signum, rank

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if trainer.global_step == self.step and self.rank in (None, trainer.global_rank):
            os.kill(os.getpid(), self.signum)
