"""Atomic checkpoint files: a kill while saving never leaves a corrupt ``last.ckpt``.

Lightning's default ``TorchCheckpointIO`` serialises into memory and lets fsspec write
a temporary file in the *system* temp directory, then ``shutil.move`` it over the
target. When ``$TMPDIR`` and the run directory are on different file systems (node-local
``/tmp``, checkpoints on a shared file system: the usual cluster layout) that move is a
copy straight into the target, so a kill during the copy corrupts it, and nothing is
fsynced, so a node crash right after the rename can leave an empty file.

:class:`AtomicCheckpointIO` writes a temporary file beside the target, fsyncs it,
``os.replace``\\ s it over the target (atomic on POSIX within one file system) and fsyncs
the directory. Remote URLs (``s3://`` ...) keep Lightning's behaviour.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

TEMP_SUFFIX = ".partial"


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, directory unwritable): the file it would
    have replaced is untouched."""


def atomic_write(path: _PATH, write: Callable[[BinaryIO], None]) -> None:
    """``write`` the file ``path`` through a fsynced temporary file in the same directory,
    renamed over it; CheckpointWriteError (the previous file untouched) when that fails."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        for stale in target.parent.glob(f".{target.name}.*{TEMP_SUFFIX}"):
            stale.unlink(missing_ok=True)  # left by a save that was killed
        fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
    except OSError as err:
        raise CheckpointWriteError(err.errno, f"could not write checkpoint '{target}': {err.strerror or err}") from err
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, target)
    except BaseException as err:
        Path(temp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            kept = "the previous file there is untouched" if target.exists() else "nothing was left there"
            raise CheckpointWriteError(
                err.errno, f"could not write checkpoint '{target}': {err.strerror or err}; {kept}"
            ) from err
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def atomic_torch_save(obj: Any, path: _PATH) -> None:
    """``torch.save(obj, path)``, atomically and durably (:func:`atomic_write`)."""
    atomic_write(path, lambda f: torch.save(obj, f))


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic and durable (see the module doc)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Optional[Any] = None) -> None:
        protocol = get_filesystem(path).protocol
        if storage_options is not None or "file" not in (protocol if isinstance(protocol, tuple) else (protocol,)):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)
