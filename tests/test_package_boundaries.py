"""The model package stays plain PyTorch: importing all of minigpt5 never loads Lightning."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import minigpt5

ROOT = Path(__file__).resolve().parents[1]


def test_minigpt5_never_imports_lightning():
    modules = [f"minigpt5.{m.name}" for m in pkgutil.iter_modules(minigpt5.__path__)]
    assert "minigpt5.model" in modules and "minigpt5.generate" in modules
    code = ("import importlib, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning'))\n"
            "print(','.join(loaded))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "", f"minigpt5 pulled in Lightning: {result.stdout.strip()}"
