"""The shared progress bar: counts and rates on a terminal, nothing on a log file or when turned off."""

from __future__ import annotations

import argparse
import io
import sys

from terminal import Terminal

from minigpt5.progress import add_progress_flag, progress_bar, shows_progress


def test_on_a_terminal_the_bar_shows_count_total_and_rate(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert list(progress_bar(range(5), desc="rows", unit="row")) == [0, 1, 2, 3, 4]  # items pass through
    shown = terminal.getvalue()
    assert "rows" in shown and "5/5" in shown and "row/s" in shown
    bar = progress_bar(desc="encode", unit="sample")  # no total: the count and the rate
    bar.update(3)
    bar.set_postfix(shards="1/2")
    bar.close()
    assert "encode: 3sample" in terminal.getvalue() and "shards=1/2" in terminal.getvalue()


def test_the_bar_is_silent_on_a_log_file_and_when_turned_off(monkeypatch):
    log = io.StringIO()  # not a terminal: a redirected stderr
    monkeypatch.setattr(sys, "stderr", log)
    assert list(progress_bar(range(3), desc="rows", unit="row")) == [0, 1, 2]
    assert log.getvalue() == ""
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = progress_bar(range(3), desc="rows", unit="row", enabled=False)
    assert list(bar) == [0, 1, 2]
    bar.update(2)
    bar.set_postfix(images=1)
    bar.close()
    assert terminal.getvalue() == ""
    assert shows_progress(stream=terminal) and not shows_progress(False, terminal)
    assert not shows_progress(stream=log) and not shows_progress(stream=object())  # no isatty at all


def test_the_flag_turns_progress_off():
    parser = argparse.ArgumentParser()
    add_progress_flag(parser)
    assert parser.parse_args([]).progress and not parser.parse_args(["--no-progress"]).progress
