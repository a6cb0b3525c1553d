"""The demo's path end to end, shortened: tiny SD pretraining -> export -> stage 1 loading it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from data_modules.synthetic import write_synthetic
from lit_models.cli import main
from minigpt5.builders import build_diffusion, build_sd_tokenizer
from minigpt5.config import DiffusionConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_pretrained_tiny_sd_is_loaded_frozen_by_stage_one(tmp_path):
    shards = write_synthetic(tmp_path / "data", num=64, val_num=16, size=16, seed=0, shard_size=32)
    export = tmp_path / "tiny_sd" / "model"
    data = [f"--data.train_shards={shards.train}", "--data.batch_size=8", "--data.num_workers=0",
            "--data.samples_per_epoch=64"]
    assert main(["pretrain-sd", "fit", "-c", str(ROOT / "configs/tiny_sd.yaml"), "--trainer.max_steps=4",
                 "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path / 'tiny_sd'}",
                 f"--model.export_dir={export}", *data]) == 0
    for sub in ("text_encoder", "tokenizer", "unet", "scheduler"):
        assert (export / sub).is_dir(), sub

    # The export differs from a fresh tiny UNet (it trained) and loads through from_pretrained.
    loaded_cfg = DiffusionConfig(path=str(export))
    fresh_cfg = DiffusionConfig()
    _, loaded_unet, _, _ = build_diffusion(loaded_cfg, len(build_sd_tokenizer(loaded_cfg)))
    torch.manual_seed(0)
    _, fresh_unet, _, _ = build_diffusion(fresh_cfg, len(build_sd_tokenizer(fresh_cfg)))
    assert not all(torch.equal(a, b) for a, b in zip(loaded_unet.parameters(), fresh_unet.parameters()))

    run = tmp_path / "uas"
    assert main(["fit", "-c", str(ROOT / "configs/uas.yaml"), "-c", str(ROOT / "configs/model/tiny.yaml"),
                 "--trainer.max_steps=3", "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={run}",
                 f"--model.config.diffusion.path={export}", f"--data.val_shards={shards.val}", *data]) == 0
    ckpt = run / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert not any(k.startswith("model.unet.") for k in state)  # the loaded SD stays frozen

    # The caption-following benchmark runs on that checkpoint and writes its grid and figures.
    out = tmp_path / "follow.png"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks/caption_following.py"), "--ckpt", str(ckpt),
                             "--seeds", "1", "--steps", "2", "--out", str(out), "--decoder-alone"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "colour follows caption: trained" in result.stdout
    assert out.is_file() and out.with_suffix(".json").is_file()
    assert "shape follows caption: trained" in result.stdout
    assert "decoder alone, from its caption embeddings: colour" in result.stdout
    alone = json.loads(out.with_suffix(".json").read_text())
    assert 0 <= alone["decoder"] <= 1 and 0 <= alone["decoder_shape"] <= 1

    # The sampler sweep on it: each setting's UNet calls counted (dpm++ and ddim: one per step), curves written.
    curves = tmp_path / "steps.png"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks/sampler_steps.py"), "--ckpt", str(ckpt),
                             "--samplers", "ddim", "dpm++", "--steps", "1", "3", "--reference-steps", "3",
                             "--seeds", "1", "--out", str(curves)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(curves.with_suffix(".json").read_text())
    assert {s: {k: r["unet_calls"] for k, r in rows.items()} for s, rows in figures["rows"].items()} == {
        "ddim": {"1": 1, "3": 3}, "dpm++": {"1": 1, "3": 3}}
    assert all(0 <= r["score"] <= 1 for rows in figures["rows"].values() for r in rows.values())
    assert "dpm++" in figures["verdicts"] and "reference: ddim at 3 steps" in result.stdout
    assert Image.open(curves).size == (900, 420)
