"""Activation checkpointing on the LLM's decoder layers and the UNet's blocks."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from minigpt5.config import MiniGPT5Config, PeftSettings
from minigpt5.layers import checkpoint_layers, layer_classes, unet_block_classes
from minigpt5.model import MiniGPT5

CAPTIONS = ["a red circle", "a blue square", "a green triangle"]


def build(cfg: MiniGPT5Config, llm: bool, unet: bool) -> MiniGPT5:
    cfg = replace(
        cfg,
        llm=replace(cfg.llm, gradient_checkpointing=llm),
        diffusion=replace(cfg.diffusion, gradient_checkpointing=unet),
    )
    torch.manual_seed(0)  # the mapper (and LoRA) initialise from the global RNG
    model = MiniGPT5(cfg).train()
    with torch.no_grad():  # LoRA's B starts at zero, which would leave A without a gradient
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(4)) * 0.1)
    return model


def step(model: MiniGPT5, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """Loss, grads of the trainable parameters, and bytes autograd saved for the backward."""
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    torch.manual_seed(1)  # dropout (LoRA's in stage 2) draws from the global RNG
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(batch, generator=torch.Generator().manual_seed(2)).total(model.cfg.loss)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, saved


@pytest.mark.parametrize("stage", ["uas", "mls"])
def test_checkpointing_gives_the_same_grads_and_saves_less(tiny_config, caption_batch, stage):
    cfg = tiny_config
    if stage == "mls":  # LoRA with dropout in the checkpointed layers: the RNG must be replayed
        cfg = replace(cfg, peft=PeftSettings(method="lora", lora_dropout=0.1))
    plain = build(cfg, llm=False, unet=False)
    batch = caption_batch(plain, CAPTIONS, generator=torch.Generator().manual_seed(3))
    loss0, grads0, saved0 = step(plain, batch)
    for llm, unet in [(True, False), (False, True), (True, True)]:
        loss, grads, saved = step(build(cfg, llm, unet), batch)
        torch.testing.assert_close(loss, loss0, rtol=0, atol=0)
        assert grads.keys() == grads0.keys()
        for name in grads0:
            # Every trainable tensor gets a gradient (voken rows and LoRA through the frozen LLM).
            assert grads0[name].abs().sum() > 0, name
            torch.testing.assert_close(grads[name], grads0[name], rtol=1e-5, atol=1e-7, msg=name)
        assert saved < saved0, (llm, unet, saved, saved0)


def test_layer_classes_and_idempotent_wrapping(tiny_model):
    assert layer_classes(tiny_model.llm) == {LlamaDecoderLayer}
    assert {c.__name__ for c in unet_block_classes(tiny_model.unet)} == {
        "DownBlock2D", "CrossAttnDownBlock2D", "UNetMidBlock2DCrossAttn", "CrossAttnUpBlock2D", "UpBlock2D"
    }
    names = [n for n, _ in tiny_model.named_parameters()]
    assert checkpoint_layers(tiny_model.llm, layer_classes(tiny_model.llm)) == tiny_model.cfg.llm.num_layers
    assert checkpoint_layers(tiny_model.llm, layer_classes(tiny_model.llm)) == 0  # already done
    assert [n for n, _ in tiny_model.named_parameters()] == names  # no wrapper module in the names
    # A deep copy's layers recompute themselves, not the original's.
    clone = copy.deepcopy(tiny_model.llm)
    layer = clone.model.layers[0]
    assert layer.forward.__self__ is layer


def test_a_model_without_declared_layers_is_refused():
    with pytest.raises(ValueError, match="_no_split_modules"):
        layer_classes(torch.nn.Linear(2, 2))
