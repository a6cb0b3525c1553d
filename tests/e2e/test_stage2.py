"""Stage 2 (MLS) training: starts from a stage-1 checkpoint with the paper's stage-2 settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_modules.convert.vist import convert_vist
from data_modules.synthetic import write_synthetic
from lit_models.cli import main
from lit_models.lightning_cli import run_lightning
from lit_models.module import MiniGPT5Module

ROOT = Path(__file__).resolve().parents[2]
STAGE1 = ["-c", str(ROOT / "configs/uas.yaml"), "-c", str(ROOT / "configs/model/tiny.yaml")]
STAGE2 = ["-c", str(ROOT / "configs/uas.yaml"), "-c", str(ROOT / "configs/mls.yaml"),
          "-c", str(ROOT / "configs/mls_vist.yaml"), "-c", str(ROOT / "configs/model/tiny.yaml")]
QUIET = ["--trainer.enable_progress_bar=false", "--data.num_workers=0"]


@pytest.fixture(scope="module")
def stage1_ckpt(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("uas")
    shards = write_synthetic(root / "data", num=32, val_num=0, size=16, seed=0, shard_size=32)
    assert main(["fit", *STAGE1, *QUIET, "--trainer.max_steps=2", f"--trainer.default_root_dir={root}",
                 f"--data.train_shards={shards.train}", "--data.batch_size=8", "--data.samples_per_epoch=32"]) == 0
    return root / "checkpoints" / "last.ckpt"


@pytest.fixture
def vist_spec(samples_dir, tmp_path) -> str:
    vist = samples_dir / "VIST"
    return convert_vist(vist / "val_cleaned.json", vist / "val_image_mapping.json", tmp_path / "vist").spec


def stage2_module(ckpt: Path, tmp_path) -> MiniGPT5Module:
    cli = run_lightning(MiniGPT5Module, STAGE2 + [f"--model.init_from={ckpt}", f"--trainer.default_root_dir={tmp_path}",
                                                   "--data.train_shards=unused.tar"], run=False)
    return cli.model


def test_stage2_settings_and_weights_loaded_from_stage1(stage1_ckpt, tmp_path):
    module = stage2_module(stage1_ckpt, tmp_path)
    cfg = module.config
    assert cfg.peft.method == "lora" and (cfg.peft.lora_r, cfg.peft.lora_alpha) == (8, 16)
    assert cfg.loss.cap_weight == 0.0 and cfg.vision.kind == "blip2"
    trainable = module.trainable_keys()
    assert not any(k.startswith(("model.mapper.mlp.", "model.mapper.queries")) for k in trainable)
    assert any(k.startswith("model.mapper.transformer.") for k in trainable)
    assert any("lora_" in k for k in trainable) and any(k.startswith("model.input_projection.") for k in trainable)
    assert not any(k.startswith(("model.vision.", "model.unet.", "model.text_encoder.")) for k in trainable)

    saved = torch.load(stage1_ckpt, map_location="cpu", weights_only=False)["state_dict"]
    own = module.state_dict()
    assert saved and all(torch.equal(own[k], v) for k, v in saved.items())  # every stage-1 tensor loaded


def test_stage2_fit_runs_without_cap_and_trains_lora(stage1_ckpt, vist_spec, tmp_path):
    root = tmp_path / "mls"
    assert main(["fit", *STAGE2, *QUIET, "--trainer.max_steps=2", f"--trainer.default_root_dir={root}",
                 f"--model.init_from={stage1_ckpt}", f"--data.train_shards={vist_spec}", "--data.batch_size=4",
                 "--data.samples_per_epoch=4", "--model.config.llm.max_length=256"]) == 0
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in ckpt["state_dict"].items())  # LoRA moved off zero
    assert not any(k.startswith("model.mapper.mlp.") for k in ckpt["state_dict"])


def test_init_from_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.ckpt"):
        MiniGPT5Module(init_from=str(tmp_path / "nowhere.ckpt"))
