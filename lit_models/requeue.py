"""SLURM auto-requeue at a step boundary, so the requeued job resumes exactly.

With ``SLURMEnvironment(auto_requeue=True)`` Lightning saves ``hpc_ckpt_N.ckpt`` and
runs ``scontrol requeue`` *inside* the SIGUSR1 handler, i.e. wherever Python happens to
be: mid forward (the checkpoint's data position then already counts the batch being
trained on, so the resumed run skips it), mid ``optimizer.step`` (half-updated
weights), and under DDP each rank may be inside a different collective when the save's
own collectives start. :class:`RequeueAtStepBoundary` keeps Lightning's handler but
runs it after the step's ``on_train_batch_end``, on every rank at the same step (the
ranks agree with one all-reduce per step), then stops training.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType
from typing import Any, Callable, Optional

from lightning.pytorch import Callback, LightningModule, Trainer

log = logging.getLogger(__name__)
Handler = Callable[[int, Optional[FrameType]], Any]


class RequeueAtStepBoundary(Callback):
    """Defers the handler installed for ``signum`` (Lightning's SLURM requeue) to the end of a step.

    Does nothing when no handler is installed for ``signum`` (no SLURM auto-requeue).
    """

    def __init__(self, signum: int = int(signal.SIGUSR1)) -> None:
        self.signum = signum
        self._handler: Optional[Handler] = None
        self._received = False

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning installs its handlers when the run starts, before this hook.
        handler = signal.getsignal(self.signum)
        if callable(handler):
            self._handler = handler
            signal.signal(self.signum, self._note)

    def _note(self, signum: int, frame: Optional[FrameType]) -> None:
        self._received = True

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._handler is None or not trainer.strategy.reduce_boolean_decision(self._received, all=False):
            return
        log.info("signal %d: saving the HPC checkpoint after step %d and requeueing", self.signum, trainer.global_step)
        self._handler(self.signum, None)
        self._received = False
        trainer.should_stop = True

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._handler is not None:
            signal.signal(self.signum, self._handler)  # Lightning restores its originals at teardown
            self._handler = None
