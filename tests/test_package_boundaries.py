"""The package ladder: minigpt5 <- data_modules <- evaluation <- lit_models, callbacks. The model
package stays plain PyTorch (importing all of it never loads Lightning), no import points up the
ladder, and no modules import each other in a circle (deferred imports included)."""

from __future__ import annotations

import ast
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


RUNG = {"minigpt5": 0, "data_modules": 1, "evaluation": 2, "lit_models": 3, "callbacks": 3}


def project_imports() -> dict[str, set[str]]:
    """Every module of the packages -> the modules of the packages it imports, anywhere in it."""
    files = {}
    for package in RUNG:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            files[name.removesuffix(".__init__")] = path
    graph = {}
    for name, path in files.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = {other for other in imported if other in files and other != name}
    return graph


def circle_from(graph: dict[str, set[str]], start: str) -> list[str]:
    """A path of imports from ``start`` back to itself, or [] when there is none."""
    stack, seen = [(start, [start])], set()
    while stack:
        name, path = stack.pop()
        for other in graph[name]:
            if other == start:
                return path + [start]
            if other not in seen:
                seen.add(other)
                stack.append((other, path + [other]))
    return []


def test_no_import_points_up_the_ladder_or_closes_a_circle():
    graph = project_imports()
    assert "lit_models.cli" in graph and "minigpt5.model" in graph
    upward = [f"{a} -> {b}" for a, imported in graph.items() for b in imported
              if RUNG[b.split(".")[0]] > RUNG[a.split(".")[0]]]
    assert upward == []
    circles = [" -> ".join(circle) for name in sorted(graph) if (circle := circle_from(graph, name))]
    assert circles == []
