"""DataLoader workers start from the forkserver, never forked from the training process."""

from __future__ import annotations

import os
import threading

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_modules.workers import worker_context


class ParentOfWorker(IterableDataset):
    """Yields, from each worker, the pid of the process that started it."""

    def __iter__(self):
        info = get_worker_info()
        yield {"parent": torch.tensor(os.getppid()), "worker": torch.tensor(info.id if info else -1)}


def test_workers_are_not_children_of_a_threaded_process():
    stop = threading.Event()
    busy = threading.Thread(target=stop.wait, daemon=True)  # a training process has threads like this one
    busy.start()
    try:
        loader = DataLoader(ParentOfWorker(), batch_size=None, num_workers=2,
                            multiprocessing_context=worker_context())
        got = list(loader)
    finally:
        stop.set()
    assert sorted(int(b["worker"]) for b in got) == [0, 1]
    parents = {int(b["parent"]) for b in got}
    assert os.getpid() not in parents and len(parents) == 1  # both forked from the one server

