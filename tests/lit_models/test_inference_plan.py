"""Generation memory on the meta device (``minigpt5 plan --inference``): the live-bytes counter,
the KV cache by hand, and the choices' order at paper size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lit_models.cli import main
from minigpt5.config import MiniGPT5Config
from minigpt5.inference_memory import CHOICES, LiveBytes, inference_plan, peak_of

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PAPER = [arg for name in ("uas", "mls", "mls_vist", "model/paper") for arg in ("-c", str(CONFIGS / f"{name}.yaml"))]


def test_live_bytes_follow_tensors_until_freed():
    x = torch.empty(1000, device="meta")  # 4000 bytes, made outside: not counted

    def step():
        y = x + 1  # 4000 alive
        z = y * 2  # 8000 alive at once
        del y
        return z.view(10, 100)  # a view: nothing new

    peak, kept = peak_of(step)
    assert (peak, kept) == (8000, 4000)
    with LiveBytes() as counter:
        torch.ones(10, device="meta").add_(1)  # in place: only the ones are new, freed at once
    assert (counter.peak, counter.live) == (40, 0)


def test_tiny_kv_cache_is_the_formula():
    cfg = MiniGPT5Config()
    _, phases, peaks = inference_plan(cfg)
    # keys and values, every layer, every position, bf16
    assert phases.cache == 2 * cfg.llm.num_layers * cfg.llm.max_length * cfg.llm.hidden_size * 2
    assert phases.prompt >= phases.cache and phases.unet > 0 and phases.vae == 0  # pixel space: no decoder
    assert [p.choice for p in peaks] == list(CHOICES)


def test_paper_size_choices_in_order(capsys):
    assert main(["plan", "--inference", *PAPER]) == 0
    table = capsys.readouterr().out
    labels = {choice.label for choice in CHOICES}
    peaks = {line[:32].strip(): float(line.split()[-2]) for line in table.splitlines() if line[:32].strip() in labels}
    assert len(peaks) == len(CHOICES)
    order = ["float32", "bfloat16", "bfloat16 + 8-bit LLM", "bfloat16 + 4-bit LLM"]
    assert [peaks[label] for label in order] == sorted((peaks[label] for label in order), reverse=True)
    for label in order:
        assert peaks[f"{label}, offload"] < peaks[label]
    # bf16 resident is the paper's ~7B LLM + SD 2.1 + BLIP-2 tower: 16-20 GiB; 4-bit offloaded well under 24 GB
    assert 16 < peaks["bfloat16"] < 20 and peaks["bfloat16 + 4-bit LLM, offload"] < 8
    assert "fits 24 GB" in table


@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_quantized_llm_bytes_by_hand(bits):
    sizes, _, peaks = inference_plan(MiniGPT5Config())
    peak = next(p for p in peaks if p.choice.quantize == bits and not p.choice.offload)
    per_weight, per_row = {"8bit": (1.0, 4.0), "4bit": (0.5 + 1 / 64 + 4 / 16384, 0.0)}[bits]
    assert peak.llm == pytest.approx(sizes.llm_other + sizes.llm_linear * per_weight + sizes.llm_linear_rows * per_row)
