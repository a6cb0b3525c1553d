"""DeepSpeed checkpoints that a kill during a save cannot corrupt.

Lightning's ``DeepSpeedStrategy`` saves every checkpoint under the fixed tag "checkpoint":
the next save of ``last.ckpt`` overwrites the files of the previous one in place, so a job
killed mid-save is left with neither. :class:`MiniGPT5DeepSpeedStrategy` (named by
``configs/strategy/deepspeed_zero*.yaml``) saves into a new tag each time and only then
switches DeepSpeed's ``latest`` file to it (written beside, fsynced, renamed over), and
deletes the older tags last. Until the switch, ``latest`` names the previous, complete tag,
which is what ``engine.load_checkpoint``, Lightning's resume and ``minigpt5 export`` read.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable, Optional

from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.strategies import DeepSpeedStrategy

from lit_models.checkpoint_io import atomic_write

LATEST = "latest"  # DeepSpeed's file naming the tag to load


def write_latest(directory: Path, tag: str) -> None:
    """Point ``directory/latest`` at ``tag`` atomically (:func:`atomic_write`: temporary file, fsync, rename)."""
    atomic_write(directory / LATEST, lambda f: f.write(tag.encode()))


def save_in_new_tag(
    engine: Any, directory: _PATH, tag: str, client_state: dict[str, Any], *, exclude_frozen_parameters: bool,
    is_global_zero: bool, barrier: Callable[[], None],
) -> None:
    """``engine.save_checkpoint`` into ``directory/tag`` (``tag`` the same on every rank), then
    ``latest`` switched to it and the other tags removed by rank 0, between barriers."""
    directory = Path(directory)
    engine.save_checkpoint(str(directory), tag=tag, client_state=client_state, save_latest=False,
                           exclude_frozen_parameters=exclude_frozen_parameters)
    barrier()  # every rank's shards of the new tag are written
    if is_global_zero:
        write_latest(directory, tag)
        for old in directory.iterdir():
            if old.is_dir() and old.name != tag:
                shutil.rmtree(old)
    barrier()


class MiniGPT5DeepSpeedStrategy(DeepSpeedStrategy):
    """``DeepSpeedStrategy`` whose saves go to a new tag, switched to only when complete (see the module doc)."""

    def save_checkpoint(self, checkpoint: dict, filepath: _PATH, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options: DeepSpeed writes its own files")
        filepath = self.broadcast(filepath)
        tag = self.broadcast(f"step{checkpoint.get('global_step', 0):09d}-{time.time_ns()}")  # one name on all ranks
        client_state = {k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer_states")}
        save_in_new_tag(self.deepspeed_engine, filepath, tag, client_state,
                        exclude_frozen_parameters=self.exclude_frozen_parameters,
                        is_global_zero=self.is_global_zero, barrier=self.barrier)
