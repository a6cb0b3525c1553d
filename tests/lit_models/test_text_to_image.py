"""The tiny SD stand-in's pretraining module: what it trains, and the schedule it builds."""

from __future__ import annotations

import pytest
import torch

from lit_models.text_to_image import TextToImageModule
from minigpt5.config import ConfigError, DiffusionConfig, MiniGPT5Config
from minigpt5.sequences import tokenize_for_text_encoder


def _changed_after_a_step(module: TextToImageModule) -> dict[str, bool]:
    """One SGD step on a batch of captions and pictures -> which parts moved."""
    torch.manual_seed(0)
    ids = tokenize_for_text_encoder(module.sd_tokenizer, ["a red circle", "a blue square"], 8)
    batch = {"caption_ids": ids, "target_pixels": torch.rand(2, 3, 16, 16) * 2 - 1}
    before = {name: [p.detach().clone() for p in part.parameters()]
              for name, part in (("text_encoder", module.text_encoder), ("unet", module.unet))}
    optimiser = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=1.0)
    module.train()
    module._loss(batch).backward()
    optimiser.step()
    return {name: any(not torch.equal(a, b) for a, b in zip(before[name], part.parameters()))
            for name, part in (("text_encoder", module.text_encoder), ("unet", module.unet))}


@pytest.mark.parametrize("train_text_encoder", [False, True])
def test_the_text_encoder_trains_only_when_asked(train_text_encoder):
    module = TextToImageModule(train_text_encoder=train_text_encoder)
    assert _changed_after_a_step(module) == {"text_encoder": train_text_encoder, "unet": True}


def test_the_tiny_scheduler_takes_the_configured_schedule():
    diffusion = DiffusionConfig(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    module = TextToImageModule(config=MiniGPT5Config(diffusion=diffusion))
    config = module.scheduler.config
    assert (config.beta_schedule, config.prediction_type) == ("squaredcos_cap_v2", "v_prediction")
    assert float(module.scheduler.alphas_cumprod[-1]) < 1e-3  # the cosine schedule ends near pure noise
    assert TextToImageModule().scheduler.config.beta_schedule == "linear"


def test_an_sdxl_stand_in_is_refused_clearly():
    with pytest.raises(ConfigError, match="SD 1.x/2.x-style stand-ins only; diffusion.kind is sdxl"):
        TextToImageModule(config=MiniGPT5Config(diffusion=DiffusionConfig(kind="sdxl")))
