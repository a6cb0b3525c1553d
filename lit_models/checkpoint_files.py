"""Reading checkpoint and weights files without running code from them.

A PyTorch file is a pickle, and unpickling a stranger's file can run any command. Every
checkpoint here is read with ``torch.load(weights_only=True)``: tensors, containers and
plain values only, plus this project's own config classes, allow-listed
(:func:`allow_project_classes`). A file that needs anything else is refused with the
file and what it asked for named; ``allow_pickle`` (``--allow-pickle`` on the commands)
reads it in full, for files the user trusts. A file that is not a PyTorch file at all is
refused as such.
"""

from __future__ import annotations

import dataclasses
import inspect
import pickle
import zipfile
from pathlib import Path
from typing import Any, Union

import torch

from lit_models.optim import OptimConfig
from minigpt5 import config as model_config


class UnsafeCheckpointError(ValueError):
    """The file holds more than tensors and plain values: reading it could run code."""


class NotACheckpointError(ValueError):
    """The file is not a PyTorch checkpoint."""


def project_classes() -> list[type]:
    """The config dataclasses a checkpoint's hyper-parameters may hold."""
    found = [cls for _, cls in inspect.getmembers(model_config, inspect.isclass)
             if dataclasses.is_dataclass(cls) and cls.__module__ == model_config.__name__]
    return found + [OptimConfig]


def allow_project_classes() -> None:
    """Let ``weights_only`` loading rebuild this project's config objects (and nothing more)."""
    torch.serialization.add_safe_globals(project_classes())


def load_checkpoint_file(path: Union[str, Path], *, allow_pickle: bool = False, mmap: bool = False) -> Any:
    """``torch.load`` of ``path`` on the CPU, tensors and plain values only unless ``allow_pickle``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    allow_project_classes()
    mmap = mmap and zipfile.is_zipfile(path)  # only the zip format can be memory-mapped
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle, mmap=mmap)
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
        first = lines[0]
        reason = next((line for line in lines if "Unsupported global" in line), first)  # what it asked for
        if "invalid load key" in first or "could not find MARK" in first or not zipfile.is_zipfile(path):
            raise NotACheckpointError(f"'{path}' is not a PyTorch checkpoint ({first})") from err
        raise UnsafeCheckpointError(
            f"'{path}' holds objects other than tensors and plain values, so reading it could run code; it was "
            f"not read ({reason}). If you trust where it came from, pass --allow-pickle."
        ) from err
    except Exception as err:  # noqa: BLE001 - whatever a malformed file makes the unpickler raise
        raise NotACheckpointError(f"'{path}' is not a PyTorch checkpoint ({type(err).__name__}: "
                                  f"{str(err).splitlines()[0] if str(err) else ''})") from err
