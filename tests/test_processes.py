"""The test harness for child processes (tests/processes.py): a run's leftovers never hold a test up."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

import processes

# The leader starts a child that would outlive it by a minute (as a killed rank's DataLoader
# workers outlive it), with the same stdout and stderr, then exits with 3.
CHILD = "import time; print('child', flush=True); time.sleep(60)"
ORPHAN = (f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {CHILD!r}]); "
          "time.sleep(0.5); print('leader', flush=True); sys.exit(3)")


def test_a_run_returns_when_its_leader_exits_and_ends_what_it_left():
    start = time.monotonic()
    result, timed_out = processes.run([sys.executable, "-c", ORPHAN], timeout=120)
    assert not timed_out and result.returncode == 3
    assert time.monotonic() - start < 30  # reading pipes to their end would have waited for the child's 60 s
    assert "leader" in result.stdout and "child" in result.stdout
    assert processes.session_members(processes.STARTED[-1]) == []


def test_a_stuck_run_is_stopped_with_its_stacks():
    code = "import faulthandler, time; faulthandler.enable(); time.sleep(60)"
    result, timed_out = processes.run([sys.executable, "-c", code], timeout=2)
    assert timed_out and "Current thread" in result.stderr  # faulthandler's dump at SIGABRT
    assert processes.session_members(processes.STARTED[-1]) == []


def test_leftover_processes_are_found():
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert stray.pid in {p.pid for p in processes.leftover_processes(before)}
    finally:
        stray.kill()
        stray.wait()
    assert stray.pid not in {p.pid for p in processes.leftover_processes(before)}
