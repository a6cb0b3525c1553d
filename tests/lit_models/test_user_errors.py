"""Every command answers a missing file with one line naming it and exit code 2 (the console entry)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import processes
import pytest

ROOT = Path(__file__).resolve().parents[2]
GONE = "/no/such/place"

CASES = {  # command -> (arguments, what the error names)
    "generate": (["generate", "--ckpt", f"{GONE}.ckpt", "--prompt", "hi"], f"{GONE}.ckpt"),
    "eval": (["eval", "--ckpt", f"{GONE}.ckpt", "--protocol", "cc3m", "--shards", f"{GONE}.tar", "--out", GONE],
             f"{GONE}.ckpt"),
    "export": (["export", "--ckpt", f"{GONE}.ckpt", "--out", f"{GONE}.safetensors"], f"{GONE}.ckpt"),
    "import-official": (["import-official", "--ckpt", f"{GONE}.pth", "--out", f"{GONE}.safetensors"], f"{GONE}.pth"),
    "data": (["data", "cc3m", "--tsv", f"{GONE}.tsv", "--out", GONE], f"{GONE}.tsv"),
    "reproduce": (["reproduce", "--assets", GONE, "--out", GONE], GONE),
    "plan": (["plan", "-c", f"{GONE}.yaml"], f"{GONE}.yaml"),
    "fit": (["fit", "-c", f"{GONE}.yaml"], f"{GONE}.yaml"),
}


@pytest.mark.parametrize("command", sorted(CASES))
def test_a_missing_file_is_one_line_naming_it_and_exit_code_2(command, tmp_path):
    args, named = CASES[command]
    result, _ = processes.run([sys.executable, "-m", "lit_models.cli", *args], timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}, cwd=str(ROOT))
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert lines[-1].startswith(f"minigpt5 {command}") and ": error: " in lines[-1] and named in lines[-1], lines[-3:]
