"""``minigpt5 export --format pretrained`` and the commands that load its folder (``generate --model``)."""

from __future__ import annotations

import json

import lightning
import numpy as np
import pytest
import torch
from PIL import Image

from lit_models.cli import main
from lit_models.module import MiniGPT5Module
from lit_models.optim import OptimConfig
from minigpt5.config import GuidanceConfig, MiniGPT5Config, PeftSettings, VisionConfig
from minigpt5.pretrained import ADAPTER_WEIGHTS_FILE, CARD_FILE, CONFIG_FILE

GENERATE = ["--prompt", "a red circle", "--greedy", "--max-new-tokens", "10", "--force-image", "--steps", "2",
            "--device", "cpu"]


@pytest.fixture(scope="module")
def stage2_ckpt(tmp_path_factory):
    """A stage-2 checkpoint as training writes one (trainable weights, config, fingerprints), with seeded weights."""
    torch.manual_seed(0)
    cfg = MiniGPT5Config(vision=VisionConfig(kind="clip"), peft=PeftSettings(method="lora", lora_dropout=0.0),
                         guidance=GuidanceConfig(num_inference_steps=2))
    module = MiniGPT5Module(cfg, OptimConfig(lr=3e-4))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    checkpoint = {"state_dict": {k: v for k, v in module.state_dict().items() if k in module.trainable_keys()},
                  "hyper_parameters": dict(module.hparams), "pytorch-lightning_version": lightning.__version__,
                  "global_step": 120, "epoch": 3}
    module.on_save_checkpoint(checkpoint)
    path = tmp_path_factory.mktemp("run") / "last.ckpt"
    torch.save(checkpoint, path)
    return path


def test_export_pretrained_writes_a_folder_that_generates_as_the_checkpoint_does(stage2_ckpt, tmp_path, capsys):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"protocol": "synthetic-vist", "shards": "val.tar", "rows": [
        {"system": "MiniGPT-5", "kind": "run", "settings": {"guidance_scale": 2}, "metrics": {"colour": 0.97}}]}))
    folder = tmp_path / "model"
    assert main(["export", "--format", "pretrained", "--ckpt", str(stage2_ckpt), "--out", str(folder),
                 "--results", str(results)]) == 0
    assert (folder / ADAPTER_WEIGHTS_FILE).is_file() and json.loads((folder / CONFIG_FILE).read_text())["stage"] == 2
    card = (folder / CARD_FILE).read_text()
    assert "global_step: 120" in card and "optim.lr: 0.0003" in card and "| MiniGPT-5 | 2 | 0.97 |" in card

    assert main(["generate", "--ckpt", str(stage2_ckpt), "--out", str(tmp_path / "a"), *GENERATE]) == 0
    assert main(["generate", "--model", str(folder), "--out", str(tmp_path / "b"), *GENERATE]) == 0
    a, b = (json.loads((tmp_path / d / "record.json").read_text()) for d in "ab")
    assert a["token_ids"] == b["token_ids"] and any("image" in s for s in a["segments"])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / "image_000.png")),
                          np.asarray(Image.open(tmp_path / "b" / "image_000.png")))


def test_generate_with_a_quantized_offloaded_bf16_model_runs(stage2_ckpt, tmp_path):
    folder = tmp_path / "model"
    assert main(["export", "--format", "pretrained", "--ckpt", str(stage2_ckpt), "--out", str(folder)]) == 0
    out = tmp_path / "q"
    assert main(["generate", "--model", str(folder), "--out", str(out), "--quantize", "8bit", "--offload",
                 "--dtype", "bfloat16", *GENERATE]) == 0
    assert json.loads((out / "record.json").read_text())["token_ids"]


def test_export_errors_name_what_is_wrong(stage2_ckpt, tmp_path, capsys):
    assert main(["export", "--format", "pretrained", "--ckpt", str(stage2_ckpt), "--out", str(tmp_path / "m"),
                 "--results", str(tmp_path / "absent.json")]) == 2
    assert "results file" in capsys.readouterr().err
    assert main(["export", "--format", "pretrained", "--ckpt", str(tmp_path / "none.ckpt"), "--out", str(tmp_path)]) == 2
    assert "none.ckpt' does not exist" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "o"), *GENERATE]) == 2
    assert "no model folder" in capsys.readouterr().err


def test_eval_reads_a_model_folder_and_records_its_weights(stage2_ckpt, tmp_path):
    from data_modules.synthetic import write_synthetic
    from evaluation.report import file_sha256

    stories = write_synthetic(tmp_path / "stories", num=1, val_num=1, size=16, seed=0, layout="stories").val
    folder = tmp_path / "model"
    assert main(["export", "--format", "pretrained", "--ckpt", str(stage2_ckpt), "--out", str(folder)]) == 0
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(folder), "--protocol", "synthetic-vist", "--shards", stories, "--extractors",
                 "tiny", "--steps", "2", "--max-new-tokens", "6", "--offload", "--no-progress", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["checkpoint"]["sha256"] == file_sha256(folder / "model.safetensors")
    assert results["rows"][0]["metrics"]["items"] >= 1
