"""Loading pretrained weights with one clear error when they are not reachable."""

from __future__ import annotations

import os
from typing import Any, Callable, TypeVar

T = TypeVar("T")


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights named in the config could not be loaded."""


def load_pretrained(what: str, path: str, loader: Callable[..., T], **kwargs: Any) -> T:
    """Call a ``from_pretrained`` loader; turn any failure into one clear error."""
    try:
        return loader(path, **kwargs)
    except (OSError, ValueError, EnvironmentError) as err:
        subfolder = kwargs.get("subfolder")
        where = f"'{path}'" + (f" (subfolder '{subfolder}')" if subfolder else "")
        offline = os.environ.get("HF_HUB_OFFLINE", "0")
        raise WeightsNotFoundError(
            f"could not load the {what} from {where}: {err.__class__.__name__}: {str(err).splitlines()[0]}\n"
            f"Provide it as a local folder (e.g. `hf download {path} --local-dir DIR` on a machine "
            f"with internet, then set the config path to DIR) or make the hub reachable "
            f"(HF_HUB_OFFLINE={offline})."
        ) from err
