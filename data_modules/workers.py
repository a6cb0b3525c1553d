"""How DataLoader workers start: from a clean server process, never forked from training.

A training process has threads besides the main one (the TensorBoard writer, Lightning's
process observer, gloo, the OpenMP pool). ``fork`` copies the process with whatever locks
those threads hold at that instant, and a worker forked at the wrong moment waits for ever
inside ``os.fork`` (seen here: a worker of rank 0 stuck so, and rank 0 joining it at exit).
Python 3.12 warns about fork in threaded processes and 3.14 makes ``forkserver`` the Linux
default for this reason. The server is a fresh interpreter started once per process; it
imports the modules the workers need once, so each worker, forked from it, starts in
milliseconds instead of importing torch again.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing import forkserver
from multiprocessing.context import BaseContext

START_METHODS = ("forkserver", "spawn", "fork")
# "__main__": the server runs the main script once (as a spawned child would), so the workers,
# which re-run it to unpickle by reference, find its imports already loaded.
_ALWAYS_PRELOADED = ("__main__", "torch", "data_modules.stream", "data_modules.errors")


def worker_context(method: str = "forkserver", *modules: str) -> BaseContext:
    """The multiprocessing context for DataLoader workers started by ``method`` (one of
    :data:`START_METHODS`); for forkserver, with ``modules`` (those whose objects the
    workers unpickle) imported in the server. Preloading only takes effect before the
    process's server first starts; a module missed then is imported by each worker
    instead, which is slower but correct. The server starts now, so its imports overlap
    whatever the caller does before the first worker is needed."""
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(sorted({*_ALWAYS_PRELOADED, *modules}))
        forkserver.ensure_running()
    return context
