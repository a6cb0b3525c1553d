"""One folder per model: save_pretrained / from_pretrained round trips, PEFT reads the adapter
alone, the stage is read from the folder, and broken or missing files are named."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from peft import PeftModel
from PIL import Image

from minigpt5.builders import build_components
from minigpt5.config import GuidanceConfig, LLMConfig, MiniGPT5Config, PeftSettings, VisionConfig
from minigpt5.fingerprint import FrozenPartsChanged
from minigpt5.generate import GenerationConfig, generate
from minigpt5.model import MiniGPT5
from minigpt5.pretrained import (
    ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, CARD_FILE, CONFIG_FILE, FINGERPRINT_FILE, WEIGHTS_FILE,
    PretrainedFolderError,
)
from minigpt5.tokenizer import build_tiny_tokenizer

STAGE2 = dict(vision=VisionConfig(kind="clip"), peft=PeftSettings(method="lora", lora_dropout=0.0),
              guidance=GuidanceConfig(num_inference_steps=2))


def seeded(cfg: MiniGPT5Config) -> MiniGPT5:
    """A model whose trainable weights (LoRA's B included, zero at init) are seeded random values."""
    torch.manual_seed(0)
    model = MiniGPT5(cfg)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    return model.eval()


def story(model: MiniGPT5, prompt: str = "a red circle", images=None):
    cfg = GenerationConfig(max_new_tokens=16, min_new_tokens=16, force_image=True, top_p=0.9, seed=7)
    return generate(model, prompt, images, cfg)


@pytest.fixture(scope="module")
def stage2(tmp_path_factory):
    model = seeded(MiniGPT5Config(**STAGE2))
    folder = model.save_pretrained(tmp_path_factory.mktemp("stage2") / "model",
                                   training={"max_steps": 40, "lr": 1e-4},
                                   results=[{"protocol": "vist", "shards": "val.tar", "rows": [
                                       {"system": "MiniGPT-5", "settings": {"guidance_scale": 2.0},
                                        "metrics": {"clip_i": 0.5, "fid": 12.3}}]}])
    return model, folder


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    model = seeded(MiniGPT5Config(guidance=GuidanceConfig(num_inference_steps=2)))
    return model, model.save_pretrained(tmp_path_factory.mktemp("stage1") / "model")


def test_folder_holds_the_config_weights_peft_adapter_and_card(stage2):
    model, folder = stage2
    assert {p.name for p in folder.iterdir()} == {CONFIG_FILE, WEIGHTS_FILE, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE,
                                                  FINGERPRINT_FILE, CARD_FILE}
    info = json.loads((folder / CONFIG_FILE).read_text())
    assert info["stage"] == 2 and info["config"]["peft"]["method"] == "lora"
    assert info["config"]["vokens"]["token_format"] == "[IMG{}]" and info["config"]["template"]["name"] == "plain"
    card = (folder / CARD_FILE).read_text()
    assert "stage 2 (MLS" in card and "max_steps: 40" in card
    assert "| MiniGPT-5 | 2 | 0.5 | 12.3 |" in card  # the results table, metrics in name order
    # frozen weights are referenced, not copied: the folder is the trainable part's size
    saved = sum(p.stat().st_size for p in folder.iterdir())
    frozen = sum(p.numel() * 4 for p in model.parameters() if not p.requires_grad)
    assert saved < frozen / 4


def test_round_trip_gives_the_same_seeded_story(stage2):
    model, folder = stage2
    loaded = MiniGPT5.from_pretrained(folder)
    assert loaded.stage == 2 and not loaded.training
    original, again = story(model), story(loaded)
    assert original.images, "force_image draws an image"
    assert again.token_ids == original.token_ids
    for a, b in zip(original.images, again.images):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_peft_loads_the_adapter_alone_with_the_models_logits(stage2):
    model, folder = stage2
    bare = build_components(model.cfg).llm  # the frozen LLM as the config builds it
    peft_llm = PeftModel.from_pretrained(bare, str(folder)).eval()
    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 45]])  # text tokens, below the vokens
    with torch.no_grad():
        theirs = peft_llm(input_ids=ids).logits  # (1, T, V)
        ours, _ = model.llm_forward(ids, torch.ones_like(ids))  # (1, T, V + n)
    assert not torch.equal(theirs, build_components(model.cfg).llm(input_ids=ids).logits)  # the adapter acts
    torch.testing.assert_close(ours[..., : theirs.shape[-1]], theirs, rtol=1e-5, atol=1e-5)


def test_stage1_folder_refuses_context_images_with_a_clear_message(stage1):
    model, folder = stage1
    loaded = MiniGPT5.from_pretrained(folder)
    assert loaded.stage == 1
    assert story(loaded).token_ids == story(model).token_ids
    with pytest.raises(ValueError, match="context images are a stage-2 feature.*stage-1 model"):
        generate(loaded, "look <image>", [Image.new("RGB", (16, 16), "red")])


def test_stand_in_paths_are_stored_absolute_so_the_folder_loads_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(3)
    stand_in = build_components(MiniGPT5Config()).llm
    stand_in.save_pretrained("tiny_lm")
    build_tiny_tokenizer().save_pretrained("tiny_lm")
    model = seeded(MiniGPT5Config(llm=LLMConfig(path="tiny_lm"), guidance=GuidanceConfig(num_inference_steps=2)))
    folder = model.save_pretrained("out/model")
    info = json.loads((folder / CONFIG_FILE).read_text())
    assert info["config"]["llm"]["path"] == str(tmp_path / "tiny_lm")
    monkeypatch.chdir(tmp_path / "out")
    assert story(MiniGPT5.from_pretrained(tmp_path / "out/model")).token_ids == story(model).token_ids


@pytest.fixture
def copy_of(stage2, tmp_path):
    import shutil

    def copy():
        return shutil.copytree(stage2[1], tmp_path / "copy")

    return copy


@pytest.mark.parametrize("name", [WEIGHTS_FILE, ADAPTER_WEIGHTS_FILE, ADAPTER_CONFIG_FILE, CONFIG_FILE, FINGERPRINT_FILE])
def test_missing_file_is_named(copy_of, name):
    folder = copy_of()
    (folder / name).unlink()
    with pytest.raises(PretrainedFolderError, match=f"has no {name}"):
        MiniGPT5.from_pretrained(folder)


@pytest.mark.parametrize("name, words", [(WEIGHTS_FILE, "not a readable safetensors"),
                                         (ADAPTER_WEIGHTS_FILE, "not a readable safetensors"),
                                         (CONFIG_FILE, "not valid JSON")])
def test_corrupt_file_is_named(copy_of, name, words):
    folder = copy_of()
    (folder / name).write_bytes(b"\x00garbage{")
    with pytest.raises(PretrainedFolderError, match=f"{name}.*{words}|{words}"):
        MiniGPT5.from_pretrained(folder)


def test_config_that_does_not_fit_is_named(copy_of):
    folder = copy_of()
    info = json.loads((folder / CONFIG_FILE).read_text())
    info["stage"] = 1
    (folder / CONFIG_FILE).write_text(json.dumps(info))
    with pytest.raises(PretrainedFolderError, match="says stage 1, but its config is a stage-2 model"):
        MiniGPT5.from_pretrained(folder)
    info["stage"], info["config"]["mapper"]["width"] = 2, 32  # other mapper: the weights do not fit
    (folder / CONFIG_FILE).write_text(json.dumps(info))
    with pytest.raises(PretrainedFolderError, match="model.safetensors' does not fit.*shape mismatches"):
        MiniGPT5.from_pretrained(folder)
    info["config"]["mapper"]["width"], info["config"]["llm"]["max_length"] = 64, 3
    (folder / CONFIG_FILE).write_text(json.dumps(info))
    with pytest.raises(PretrainedFolderError, match="invalid model config: llm.max_length"):
        MiniGPT5.from_pretrained(folder)


def test_other_frozen_weights_are_refused(copy_of):
    from safetensors.torch import load_file, save_file

    folder = copy_of()
    prints = load_file(str(folder / FINGERPRINT_FILE))
    save_file({**prints, "unet": prints["unet"] + 1.0}, str(folder / FINGERPRINT_FILE))
    with pytest.raises(FrozenPartsChanged, match="unet"):
        MiniGPT5.from_pretrained(folder)


def test_hub_id_offline_is_a_clear_error_naming_it(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(PretrainedFolderError, match=r"could not get model 'someone/minigpt5-vist'.*HF_HUB_OFFLINE"):
        MiniGPT5.from_pretrained("someone/minigpt5-vist")
    with pytest.raises(PretrainedFolderError, match="no model folder at 'no/such/folder'"):
        MiniGPT5.from_pretrained("no/such/folder")
