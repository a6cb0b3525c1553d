"""Checkpoints and the frozen weights and settings they were written with (minigpt5.fingerprint, renamed settings)."""

from __future__ import annotations

import dataclasses

import lightning
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lit_models.module import MiniGPT5Module
from minigpt5.builders import build_tiny_tokenizer
from minigpt5.config import LLMConfig, MiniGPT5Config
from minigpt5.fingerprint import FrozenPartsChanged, fingerprint, mismatched_parts


def save_llm(folder, seed: int, dtype: torch.dtype = torch.float32) -> None:
    torch.manual_seed(seed)
    llm = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(build_tiny_tokenizer()), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2,
    )).to(dtype)
    llm.save_pretrained(folder)
    build_tiny_tokenizer().save_pretrained(folder)


def test_fingerprint_survives_a_dtype_change_but_not_other_weights():
    torch.manual_seed(0)
    part = torch.nn.Linear(64, 64)
    same = fingerprint(part)
    as_bf16 = fingerprint(part.to(torch.bfloat16))
    torch.manual_seed(1)
    other = fingerprint(torch.nn.Linear(64, 64))
    assert mismatched_parts({"p": same}, {"p": as_bf16}) == []
    assert mismatched_parts({"p": same}, {"p": other}) == ["p"]
    assert mismatched_parts({"p": same}, {"q": other}) == []  # only parts present in both are compared
    with torch.device("meta"):
        assert fingerprint(torch.nn.Linear(4, 4)) is None  # nothing to sample


def test_tiny_parts_fingerprint_the_same_in_every_build(tiny_config):
    from minigpt5.model import MiniGPT5

    torch.manual_seed(1)
    first = MiniGPT5(tiny_config).frozen_fingerprint
    torch.manual_seed(2)
    second = MiniGPT5(tiny_config).frozen_fingerprint
    assert {"llm", "text_encoder", "unet"} <= first.keys()
    assert mismatched_parts(first, second) == []


def test_checkpoint_refuses_an_llm_folder_that_changed(tmp_path):
    folder = tmp_path / "llm"
    save_llm(folder, seed=0)
    module = MiniGPT5Module(MiniGPT5Config(llm=LLMConfig(path=str(folder))))
    ckpt = tmp_path / "stage1.ckpt"
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                  "pytorch-lightning_version": lightning.__version__}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, ckpt)

    # the same weights saved again in bfloat16: still the same model, loads
    save_llm(folder, seed=0, dtype=torch.bfloat16)
    MiniGPT5Module.from_checkpoint(str(ckpt))

    save_llm(folder, seed=1)  # the stand-in retrained: other weights at the same path
    with pytest.raises(FrozenPartsChanged, match=r"llm \(from .*llm\)"):
        MiniGPT5Module.from_checkpoint(str(ckpt))
    with pytest.raises(FrozenPartsChanged, match=rf"checkpoint '{ckpt}'"):
        MiniGPT5Module(module.config, init_from=str(ckpt))  # stage 2 starting from it


def test_a_checkpoint_from_before_the_template_setting_still_loads(tmp_path):
    """Checkpoints written before ``prompt`` moved to ``template.prompt`` load under the new name."""
    module = MiniGPT5Module()
    config = dataclasses.asdict(module.config)
    del config["template"]
    config["prompt"] = "story:"  # the old top-level setting
    checkpoint = {"state_dict": module.state_dict(), "pytorch-lightning_version": lightning.__version__,
                  "hyper_parameters": {"config": config, "optim": dataclasses.asdict(module.optim), "init_from": None,
                                       "_instantiator": "lightning.pytorch.cli.instantiate_module"}}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "old.ckpt")
    loaded = MiniGPT5Module.from_checkpoint(str(tmp_path / "old.ckpt"))
    assert loaded.config.template.prompt == "story:" and loaded.config.template.name == "plain"
