"""Strategy overlays parse through the CLI and build the intended Lightning strategies.

Lightning's DeepSpeed and FSDP strategies refuse to *run* without a GPU (FSDP v1 raises
"FSDP needs a non-CPU accelerator device"); constructing them, and running the FSDP
wrap policy over the built model, works on CPU and is what is tested here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from lit_models.lightning_cli import run_lightning
from lit_models.module import MiniGPT5Module
from lit_models.deepspeed_checkpoints import MiniGPT5DeepSpeedStrategy
from lit_models.strategies import MiniGPT5FSDPStrategy, MiniGPT5WrapPolicy, check_unit_dtypes, find_minigpt5
from minigpt5.config import ConfigError, MiniGPT5Config, PeftSettings, VisionConfig
from minigpt5.model import MiniGPT5

ROOT = Path(__file__).resolve().parents[2]


def build_cli(overlay: str, *extra: str):
    args = [
        "-c", str(ROOT / "configs/uas.yaml"), "-c", str(ROOT / "configs/model/tiny.yaml"),
        "-c", str(ROOT / f"configs/strategy/{overlay}.yaml"),
        "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.logger=false", "--trainer.callbacks=[]",
        *extra,
    ]
    return run_lightning(MiniGPT5Module, args, run=False)


def test_ddp_overlay():
    strategy = build_cli("ddp").trainer.strategy
    assert type(strategy) is DDPStrategy
    assert strategy._ddp_kwargs["find_unused_parameters"] is False
    assert strategy._ddp_kwargs["gradient_as_bucket_view"] is True


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_overlays(stage):
    cli = build_cli(f"deepspeed_zero{stage}")
    strategy = cli.trainer.strategy
    assert type(strategy) is MiniGPT5DeepSpeedStrategy and isinstance(strategy, DeepSpeedStrategy)
    assert strategy.config["zero_optimization"]["stage"] == stage
    assert strategy.exclude_frozen_parameters  # trainable-only checkpoints
    assert strategy.config["zero_allow_untested_optimizer"]  # our torch AdamW over trainable params


def test_fsdp_overlay_wraps_decoder_layers_unet_blocks_and_towers():
    cli = build_cli("fsdp", "--model.config.vision.kind=clip", "--model.config.peft.method=lora")
    strategy = cli.trainer.strategy
    assert type(strategy) is MiniGPT5FSDPStrategy
    assert strategy.kwargs["use_orig_params"] is True
    assert isinstance(strategy.kwargs["auto_wrap_policy"], MiniGPT5WrapPolicy)
    assert strategy.sharding_strategy.name == "FULL_SHARD"
    model = find_minigpt5(cli.model)
    # One dtype per FSDP unit: the overlay keeps every part in float32.
    assert {p.dtype for p in cli.model.parameters()} == {torch.float32}

    targets = strategy.kwargs["auto_wrap_policy"]._run_policy(cli.model, set(), {})
    units = set(targets)
    layers = [m for m in model.llm.modules() if isinstance(m, LlamaDecoderLayer)]
    blocks = [*model.unet.down_blocks, model.unet.mid_block, *model.unet.up_blocks]
    assert len(layers) == model.cfg.llm.num_layers and len(blocks) == 5
    towers = [model.text_encoder, *model.text_encoder.encoder.layers, model.vision,
              *model.vision.encoder.encoder.layers]
    for module in [*layers, *blocks, model.mapper, *towers]:
        assert module in units, type(module).__name__
    # The root unit keeps only what is used outside a unit's forward.
    in_units = {id(p) for unit in units for p in unit.parameters()}
    root = sorted({n.split(".")[1] for n, p in cli.model.named_parameters() if id(p) not in in_units})
    assert root == ["input_projection", "llm", "unet", "vokens"]
    root_llm = {n for n, p in model.llm.named_parameters() if id(p) not in in_units}
    assert all(("embed_tokens" in n or "lm_head" in n or n.endswith("model.norm.weight")) for n in root_llm), root_llm
    # Frozen parameters stay frozen; LoRA inside the wrapped layers trains.
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n and n.startswith("llm."))
    assert any(p.requires_grad for layer in layers for n, p in layer.named_parameters() if "lora_" in n)


def test_fsdp_policy_wraps_the_vae_halves_not_the_autoencoder():
    from diffusers import AutoencoderKL
    from diffusers.models.autoencoders.vae import Decoder, Encoder

    cfg = MiniGPT5Config()
    cfg.diffusion.latent_space = "vae"
    model = MiniGPT5(cfg)
    units = {type(m) for m in MiniGPT5WrapPolicy()._run_policy(model, set(), {})}
    assert {Encoder, Decoder} <= units and AutoencoderKL not in units  # encode() is called directly


def test_every_trainable_parameter_gets_a_gradient_without_context_images(caption_batch):
    """DDP runs with find_unused_parameters=False: no trainable part may sit out a step."""
    cfg = MiniGPT5Config(vision=VisionConfig(kind="clip"), peft=PeftSettings(method="lora"))
    torch.manual_seed(0)
    model = MiniGPT5(cfg).train()
    batch = caption_batch(model, ["a red circle", "a blue square"])  # no <ImageHere> in it
    model(batch).total(cfg.loss).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert torch.count_nonzero(model.input_projection.weight.grad) == 0  # touched, not moved


def test_fsdp_refuses_units_of_mixed_dtypes_with_the_fix_named():
    """A bf16 frozen LLM with fp32 voken rows in the root unit: FSDP v1 cannot flatten that."""
    cli = build_cli("fsdp", "--model.config.llm.torch_dtype=bfloat16")
    with pytest.raises(ConfigError, match=r"FSDP unit .* dtypes bfloat16, float32.*fsdp.yaml"):
        cli.trainer.strategy._setup_model(cli.model)
    check_unit_dtypes(build_cli("fsdp").model)  # the overlay as shipped is fine
