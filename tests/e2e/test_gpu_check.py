"""The GPU check (benchmarks/gpu_check.sh) end to end on the tiny preset, on the CPU: every row of
its tables holds figures or says why not, so the check cannot break unnoticed before a GPU runs it."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARDED = ("deepspeed_zero2", "deepspeed_zero3", "fsdp")


def table_rows(text: str) -> dict[str, list[str]]:
    """The markdown tables' rows of ``text`` by their first cell; header and separator rows left out."""
    lines = text.splitlines()
    rows = {}
    for line, after in zip(lines, lines[1:] + [""]):
        if line.startswith("| ") and not after.startswith("|---"):
            cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
            rows[cells[0]] = cells[1:]
    return rows


def figure(cell: str) -> float:
    """The number a cell starts with ("12.5" or "3.2 tokens/s"); it must be finite and positive."""
    value = float(cell.split()[0])
    assert math.isfinite(value) and value > 0, cell
    return value


def run_check(*flags: str, work: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), *flags, "--work", str(work)],
                          capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.slow
def test_tiny_gpu_check_measures_every_row_or_says_why_not(tmp_path):
    result = run_check("--tiny", "--device", "cpu", "--peak-tflops", "1", work=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "FAILED" not in result.stdout, result.stdout
    rows = table_rows(result.stdout)

    stages = [f"stage {s}, checkpointing {c}" for s in (1, 2) for c in ("off", "on")]
    for name in stages:  # step ms, peak GiB, plan GiB, TFLOP/step, MFU
        step_ms, peak, planned, tflop, mfu = rows[name]
        for cell in (step_ms, planned, tflop, mfu):
            figure(cell)
        assert peak.startswith("n/a: no allocator peak on cpu")
    for stage in (1, 2):  # the plan counts the same step with fewer activations when checkpointed
        planned = {c: figure(rows[f"stage {stage}, checkpointing {c}"][2]) for c in ("off", "on")}
        assert planned["on"] < planned["off"]

    generation = {name: cells for name, cells in rows.items() if name.startswith(("text, ", "one image at 16 px"))}
    assert len(generation) == 2, rows
    units = sorted(cells[0].split()[1] for cells in generation.values())
    assert units == ["images/s", "tokens/s"]
    for rate, peak, planned in generation.values():
        figure(rate)
        figure(planned)

    step_ms, peak, planned, checkpoint, resumed = rows["ddp"]  # fitted, saved, resumed through minigpt5 fit
    figure(step_ms)
    figure(planned)
    assert (checkpoint, resumed) == ("last.ckpt (file) at step 2", "from step 2 to 4")
    for name in SHARDED:
        assert rows[name][0].startswith("skipped: needs CUDA"), rows[name]
    assert (tmp_path / "strategies" / "ddp" / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "strategies" / "weights").exists()  # the saved random weights are removed


def test_paper_sizes_refuse_the_cpu_and_say_what_to_run(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--part", "steps",
                             "--device", "cpu", "--work", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "the paper sizes need a CUDA GPU; on the CPU run the tiny preset (--tiny)" in result.stderr
