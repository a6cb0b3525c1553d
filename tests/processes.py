"""Child processes of the tests: each run in its own session, its output in files, and all
of it ended when the run's leader exits.

Why files and sessions: a run killed on purpose (``os._exit`` in ``kill_switch``) leaves its
DataLoader workers (and, under DDP, the other rank's) alive until their watchdog notices,
about 5 s later, or never if one is stuck flushing a queue to a parent that is gone. They
hold the run's stdout and stderr, so a test that reads pipes to their end waits for them.
Here a test waits for the leader alone, then ends every process left in its session.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import IO, Optional

import psutil

STARTED: list[int] = []  # session ids (their leaders' pids) of every run the tests started
# Helpers multiprocessing starts once per interpreter and keeps until it exits: not leftovers.
INTERPRETER_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def session_members(sid: int) -> list[psutil.Process]:
    """The live processes of session ``sid`` (zombies excluded)."""
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getsid(proc.pid) == sid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


def end_session(sid: int, grace: float = 5.0) -> None:
    """SIGKILL every process left in session ``sid`` and wait (up to ``grace`` s) until they are gone."""
    members = session_members(sid)
    for proc in members:
        try:
            proc.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(members, timeout=grace)


@dataclass
class Run:
    """A started command in its own session; :meth:`finish` waits, ends the session, returns the result."""

    command: list[str]
    proc: subprocess.Popen
    out: IO[str]
    err: IO[str]
    timed_out: bool = field(default=False)

    @classmethod
    def start(cls, command: list[str], env: Optional[dict[str, str]] = None, cwd: Optional[str] = None) -> "Run":
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=err, text=True, start_new_session=True)
        STARTED.append(proc.pid)
        return cls(command, proc, out, err)

    def finish(self, timeout: float) -> subprocess.CompletedProcess:
        """Wait for the leader (at most ``timeout`` s; past it every process of the session gets
        SIGABRT, so faulthandler prints its Python stacks into stderr), then end the rest."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.timed_out = True
            for proc in session_members(self.proc.pid):
                try:
                    proc.send_signal(signal.SIGABRT)
                except psutil.Error:
                    continue
            time.sleep(2)  # time for the stacks to be written
        finally:
            end_session(self.proc.pid)
            self.proc.wait()
        texts = []
        for stream in (self.out, self.err):
            stream.seek(0)
            texts.append(stream.read())
            stream.close()
        return subprocess.CompletedProcess(self.command, self.proc.returncode, *texts)


def run(command: list[str], timeout: float, env: Optional[dict[str, str]] = None,
        cwd: Optional[str] = None) -> tuple[subprocess.CompletedProcess, bool]:
    """Run ``command`` to its end (see :class:`Run`); the result and whether it timed out."""
    started = Run.start(command, env, cwd)
    result = started.finish(timeout)
    return result, started.timed_out


def leftover_processes(before: set[int]) -> list[psutil.Process]:
    """Processes the tests started that are still alive: descendants of this process not in
    ``before``, and members of every session :class:`Run` started."""
    me = psutil.Process()
    left = {p.pid: p for p in me.children(recursive=True) if p.pid not in before}
    for sid in STARTED:
        left.update({p.pid: p for p in session_members(sid)})
    alive = []
    for proc in left.values():
        try:
            helper = any(name in " ".join(proc.cmdline()) for name in INTERPRETER_HELPERS)
            if proc.status() != psutil.STATUS_ZOMBIE and not helper:
                alive.append(proc)
        except psutil.Error:
            continue
    return alive
