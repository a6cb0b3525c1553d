"""The README and docs/ pages: every link resolves, and every command, flag and make target they show exists."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import re
import shlex
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from lit_models import cli

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
INLINE_COMMAND = re.compile(r"`(minigpt5 [^`]+|make [a-z-]+[^`]*)`")
FLAG = re.compile(r"^(--[A-Za-z][\w.-]*)")


def shown_lines(text: str) -> list[str]:
    """Command lines a page shows: lines of code blocks that start with ``minigpt5`` or ``make``
    (continued over trailing backslashes), and inline code spans that do."""
    lines, block, pending = [], False, ""
    for raw in text.splitlines():
        if raw.startswith("```"):
            block = not block
            continue
        if block:
            line = pending + raw.strip()
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            pending = ""
            if line.startswith(("minigpt5 ", "make ")):
                lines.append(line.split("  #")[0].split(" # ")[0])
        else:
            lines += INLINE_COMMAND.findall(raw)
    return lines


def words(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError:  # an unbalanced quote in a shortened example
        return line.split()


@lru_cache(maxsize=None)
def help_text(argv: tuple[str, ...]) -> str:
    """What ``minigpt5 ARGV --help`` prints (run in this process)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            code = cli.main([*argv, "--help"])
        except SystemExit as stop:
            code = stop.code
    assert code in (0, None), f"minigpt5 {' '.join(argv)} --help exited with {code}"
    return out.getvalue()


def help_argv(tokens: list[str]) -> tuple[str, ...]:
    """The words before ``--help`` that list the options of the command ``tokens`` show: the
    command, its subcommand, and the configs (-c) it reads (they bring the data module's options)."""
    name = tokens[0]
    command = cli.COMMANDS[name]
    argv = [name]
    if name == "data" or (command.lightning and name not in ("fit", "validate", "test", "predict")):
        argv.append(tokens[1])
    configs = [tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t in ("-c", "--config")]
    for config in configs:
        if (ROOT / config).is_file():
            argv += ["-c", config]
    return tuple(argv)


def data_options(configs: list[str]) -> set[str]:
    """``--data.NAME`` flags of the data module the configs name (LightningCLI's help lists
    a subclass's options only under ``--data.help CLASS``): its constructor's parameters."""
    class_path = "data_modules.base.ShardDataModule"
    for config in configs:
        data = (yaml.safe_load((ROOT / config).read_text()) or {}).get("data") or {}
        class_path = data.get("class_path", class_path)
    module, name = class_path.rsplit(".", 1)
    parameters = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    return {f"--data.{p}" for p in parameters}


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.M))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_resolves(page):
    missing = [target for target in LINK.findall(page.read_text())
               if not target.startswith(("http://", "https://")) and not (page.parent / target).exists()]
    assert not missing, f"{page.name} links to files that do not exist: {missing}"


def problems_in(text: str) -> list[str]:
    """Commands, flags and make targets ``text`` shows that do not exist (run from the repository root)."""
    targets = makefile_targets()
    problems = []
    for line in shown_lines(text):
        tokens = words(line)
        if tokens[0] == "make":
            problems += [f"make target {t!r} ({line})" for t in tokens[1:] if "=" not in t and t not in targets]
            continue
        tokens = tokens[1:]
        if not tokens or tokens[0].startswith("-"):
            continue
        names = tokens[0].split("|")
        if any(name not in cli.COMMANDS for name in names):
            problems.append(f"command {tokens[0]!r} ({line})")
            continue
        if len(names) > 1 or (tokens[0] == "data" and (len(tokens) < 2 or "|" in tokens[1])):
            continue  # a usage line listing alternatives
        command = cli.COMMANDS[names[0]]
        argv = help_argv(tokens)
        configs = [argv[i + 1] for i, t in enumerate(argv) if t == "-c"]
        shown = help_text(argv[:1] if command.fit_config else argv)
        if command.fit_config:  # plan takes fit's -c files and flags as well as its own
            shown += help_text(("fit", *(w for c in configs for w in ("-c", c))))
        data = data_options(configs) if command.lightning or command.fit_config else set()

        def known(flag: str) -> bool:
            if flag.startswith("--data.") and data:
                return ".".join(flag.split(".")[:2]) in data
            return flag in shown
        flags = {m.group(1) for t in tokens[1:] if (m := FLAG.match(t))} - {"--help"}
        problems += [f"flag {flag} ({line})" for flag in sorted(flags) if not known(flag)]
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_flag_and_make_target_shown_exists(page, monkeypatch):
    monkeypatch.chdir(ROOT)  # configs are named relative to the repository root
    problems = problems_in(page.read_text())
    assert not problems, f"{page.name} shows what does not exist:\n" + "\n".join(problems)


def test_the_check_finds_what_does_not_exist(monkeypatch):
    monkeypatch.chdir(ROOT)
    page = """
```bash
minigpt5 eval --ckpt last.ckpt --no-such-flag 3
minigpt5 fit -c configs/uas.yaml -c configs/mls.yaml -c configs/mls_vist.yaml --data.length_grouping=4 \\
    --data.no_such_option=1
make no-such-target
minigpt5 plan --inference -c configs/uas.yaml --trainer.devices=8 --trainer.no_such=1
```
Run `minigpt5 no-such-command --help` or `minigpt5 data vist --no-such-option`.
"""
    assert [p.split(" (")[0] for p in problems_in(page)] == [
        "flag --no-such-flag", "flag --data.no_such_option", "make target 'no-such-target'", "flag --trainer.no_such",
        "command 'no-such-command'", "flag --no-such-option"]
