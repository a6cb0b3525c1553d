"""Optimizer groups and the warmup + linear-decay schedule."""

from __future__ import annotations

import pytest
import torch

from lit_models.optim import OptimConfig, build_optimizer, param_groups, warmup_decay_lambda
from minigpt5.config import ConfigError, MiniGPT5Config, PeftSettings
from minigpt5.model import MiniGPT5


def test_groups_hold_exactly_the_trainable_parameters_with_mapper_at_10x():
    torch.manual_seed(0)
    model = MiniGPT5(MiniGPT5Config(peft=PeftSettings(method="lora")))
    cfg = OptimConfig(lr=2e-5, mapper_lr_scale=10.0, weight_decay=0.05)
    groups = param_groups(model, cfg, ("mapper.",))
    names = {id(p): n for n, p in model.named_parameters()}
    grouped = [names[id(p)] for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert len(grouped) == len(set(grouped))
    for group in groups:
        for p in group["params"]:
            name = names[id(p)]
            assert group["lr"] == pytest.approx(2e-4 if name.startswith("mapper.") else 2e-5)
            assert group["weight_decay"] == (0.05 if p.dim() >= 2 else 0.0)
    assert any(names[id(p)].startswith("llm.") for g in groups for p in g["params"])  # LoRA trains


def test_schedule_warms_up_linearly_then_decays_to_zero():
    f = warmup_decay_lambda(warmup_steps=10, total_steps=110, decay="linear")
    assert f(0) == pytest.approx(0.1) and f(4) == pytest.approx(0.5) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.5) and f(110) == 0.0
    constant = warmup_decay_lambda(warmup_steps=10, total_steps=110, decay="constant")
    assert constant(100) == 1.0


def test_build_optimizer_applies_schedule_per_group():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    optimizer, schedule = build_optimizer(model, OptimConfig(lr=1.0, warmup_steps=4), (), total_steps=8)
    lrs = []
    for _ in range(8):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 0.75, 0.5, 0.25])


@pytest.mark.parametrize("kwargs, field", [({"lr": 0.0}, "optim.lr"), ({"decay": "cosine"}, "optim.decay"),
                                           ({"warmup_steps": -1}, "optim.warmup_steps")])
def test_bad_optim_values_are_named(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        OptimConfig(**kwargs)


def test_fused_unless_clipping():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    fused, _ = build_optimizer(model, OptimConfig(), (), total_steps=4)
    looped, _ = build_optimizer(model, OptimConfig(), (), total_steps=4, fused=False)
    assert fused.defaults["fused"] and not looped.defaults["fused"] and looped.defaults["foreach"]
