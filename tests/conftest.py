"""Fixtures of every package's tests: offline Hugging Face settings, a tiny config/model, caption
batches, the dataset samples, shards for short fit runs, and no process left behind.

Fixtures one package's tests share are in that folder's ``conftest.py``; helper modules
(``processes``, ``fit_runs``, ``batches``, ...) sit beside this file, importable by name."""

from __future__ import annotations

import os
import tempfile

# Before anything imports transformers / diffusers: never touch the network or the
# user's caches. Every model in these tests is built from random init.
_HF_TMP = tempfile.mkdtemp(prefix="minigpt5-tests-hf-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HOME"] = os.path.join(_HF_TMP, "hf")
os.environ["TORCH_HOME"] = os.path.join(_HF_TMP, "torch")
# The models are tiny: one intra-op thread is faster than two fighting over 2 shared
# cores (measured: sampling 0.1 s vs 0.5 s under load). Set OMP_NUM_THREADS to override.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from batches import make_caption_batch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture
def tiny_config():
    from minigpt5.config import MiniGPT5Config

    return MiniGPT5Config()


@pytest.fixture
def tiny_model(tiny_config):
    from minigpt5.model import MiniGPT5

    torch.manual_seed(0)  # the mapper is initialised from the global RNG
    return MiniGPT5(tiny_config)


@pytest.fixture
def caption_batch() -> Callable[..., dict[str, torch.Tensor]]:
    """``caption_batch(model, captions, generator=None)`` -> batch dict for ``model.forward``."""
    return make_caption_batch


# The datasets' own sample files live in ../shared/samples beside the checkout (as in CI).
SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"


@pytest.fixture
def samples_dir() -> Path:
    """``../shared/samples``; skipped when absent, but a failure under CI, where it must be there."""
    if not SAMPLES.is_dir():
        message = f"dataset samples not found at {SAMPLES}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return SAMPLES


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Synthetic caption/image shards for short ``minigpt5 fit`` runs (``fit_runs.py``), one set per module."""
    from data_modules.synthetic import write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("syn"), num=64, val_num=16, size=16, seed=0, shard_size=16)


@pytest.fixture(autouse=True)
def leaves_no_process_behind():
    """Every test ends what it started (ranks, DataLoader workers, CLI runs): anything still
    alive 10 s after the test is killed, and the test fails naming it (``tests/processes.py``)."""
    import gc
    import time

    import psutil
    from processes import leftover_processes

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    gc.collect()  # in-process DataLoader iterators end their workers when collected
    deadline = time.monotonic() + 10
    while (left := leftover_processes(before)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if left:
        names = []
        for proc in left:
            try:
                names.append(f"{proc.pid} {' '.join(proc.cmdline())[:160]}")
                proc.kill()
            except psutil.Error:
                continue
        pytest.fail(f"the test left {len(left)} process(es) running (now killed): {names}")
