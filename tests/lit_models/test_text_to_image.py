"""The tiny SD stand-ins' pretraining module: what it trains, the schedule it builds, the folder it exports."""

from __future__ import annotations

import json

import pytest
import torch

from lit_models.text_to_image import TextToImageModule
from minigpt5.builders import build_diffusion, build_sd_tokenizer
from minigpt5.config import DiffusionConfig, MiniGPT5Config
from minigpt5.decoders import decoder_kind
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


SECOND = {"text_encoder_2", "tokenizer_2"}


@pytest.mark.parametrize("kind, pipeline, parts", [
    ("sd", "StableDiffusionPipeline", {"unet"}),
    ("sdxl", "StableDiffusionXLPipeline", {"unet", *SECOND}),
    ("sd3", "StableDiffusion3Pipeline", {"transformer", *SECOND}),
])
def test_each_kind_trains_and_loads_back_as_trained(tmp_path, kind, pipeline, parts):
    module = TextToImageModule(config=MiniGPT5Config(diffusion=DiffusionConfig(kind=kind)), train_text_encoder=True)
    assert _changed_after_a_step(module) == {"text_encoder": True, "unet": True}  # SDXL's, SD3's: both encoders
    module.export(str(tmp_path))
    assert json.loads((tmp_path / "model_index.json").read_text())["_class_name"] == pipeline
    written = {p.name for p in tmp_path.iterdir()}
    assert written == {"model_index.json", "scheduler", "text_encoder", "tokenizer", *parts}

    cfg = DiffusionConfig(path=str(tmp_path))  # kind auto: read from model_index.json
    assert decoder_kind(cfg) == kind
    text_encoder, unet, _, scheduler = build_diffusion(cfg, len(build_sd_tokenizer(cfg)))
    assert type(scheduler) is type(module.scheduler)
    loaded_settings, settings = ({k: v for k, v in c.items() if not k.startswith("_")}
                                 for c in (scheduler.config, module.scheduler.config))
    assert loaded_settings == settings
    module.eval()
    ids = tokenize_for_text_encoder(module.sd_tokenizer, ["a green triangle", ""], 8)
    noisy, timesteps = torch.randn(2, 3, 16, 16), torch.tensor([10, 900])
    with torch.no_grad():
        cond = module.text_encoder(ids)[0]  # (2, 8, 32); SDXL's and SD3's (2, 9, 32), the pooled row packed
        expected = module.denoise(noisy, timesteps, cond)
        assert torch.equal(text_encoder(ids)[0], cond)
        module.unet = unet  # the loaded denoiser, through the module's own call
        assert torch.equal(module.denoise(noisy, timesteps, cond), expected)
