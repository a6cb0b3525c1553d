"""Config dataclasses: tiny defaults and clear errors that name the field."""

from __future__ import annotations

import pytest

from minigpt5.config import (
    ConfigError,
    DiffusionConfig,
    GuidanceConfig,
    LLMConfig,
    LossConfig,
    MapperConfig,
    MiniGPT5Config,
    PeftSettings,
    VokenConfig,
    model_differences,
)


def test_defaults_are_the_offline_tiny_preset():
    cfg = MiniGPT5Config()
    assert cfg.llm.path is None and cfg.diffusion.path is None
    assert cfg.vokens.tokens == [f"[IMG{i}]" for i in range(8)]
    assert cfg.mapper.num_queries == 77
    assert cfg.peft.method == "none"
    assert cfg.diffusion.resolution % 8 == 0
    assert 0 <= cfg.guidance.cfg_dropout < 1
    # Separate instances: mutating one config never leaks into another.
    other = MiniGPT5Config()
    other.llm.hidden_size = 128
    assert cfg.llm.hidden_size == 64


def test_sequences_from_yaml_become_tuples():
    assert DiffusionConfig(unet_channels=[16, 32]).unet_channels == (16, 32)
    assert PeftSettings(lora_target_modules=["q_proj"]).lora_target_modules == ("q_proj",)
    assert PeftSettings().lora_target_modules is None  # the LLM family's q and v projections


def test_adapter_settings_matter_only_with_an_adapter():
    """A checkpoint without an adapter fits any adapter settings; with one, they must agree."""
    saved = MiniGPT5Config(peft=PeftSettings(lora_target_modules=["q_proj", "v_proj"]))
    assert model_differences(saved, MiniGPT5Config()) == []
    lora = MiniGPT5Config(peft=PeftSettings(method="lora"))
    assert model_differences(MiniGPT5Config(peft=PeftSettings(method="lora", lora_target_modules=["q_proj"])), lora) == [
        "peft.lora_target_modules: ['q_proj'] -> None"]


def test_lora_targets_compare_by_the_modules_they_name(tiny_model):
    """A checkpoint of ``[q_proj, v_proj]`` resumes under null (a Llama's q and v) and the other way;
    other targets still differ, shown as the modules each names."""
    from minigpt5.adapters import resolve_lora_targets

    resolve = resolve_lora_targets(tiny_model.llm)

    def lora(targets):
        return MiniGPT5Config(peft=PeftSettings(method="lora", lora_target_modules=targets))

    assert model_differences(lora(["q_proj", "v_proj"]), lora(None), resolve) == []
    assert model_differences(lora(None), lora(["q_proj", "v_proj"]), resolve) == []
    assert model_differences(lora(["q_proj"]), lora(None), resolve) == [
        "peft.lora_target_modules: ['q_proj'] -> ['q_proj', 'v_proj']"]
    assert model_differences(lora(["all-linear"]), lora(None), resolve) == [
        "peft.lora_target_modules: 'all-linear' -> ['q_proj', 'v_proj']"]
    assert model_differences(lora(["no_such"]), lora(None), resolve) == [  # names it lacks: as written
        "peft.lora_target_modules: ['no_such'] -> ['q_proj', 'v_proj']"]


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: MapperConfig(width=10, num_heads=4), "mapper.width"),
        (lambda: MapperConfig(num_queries=0), "mapper.num_queries"),
        (lambda: MapperConfig(dropout=1.0), "mapper.dropout"),
        (lambda: GuidanceConfig(cfg_dropout=1.5), "guidance.cfg_dropout"),
        (lambda: GuidanceConfig(cfg_dropout=-0.1), "guidance.cfg_dropout"),
        (lambda: GuidanceConfig(num_inference_steps=0), "guidance.num_inference_steps"),
        (lambda: DiffusionConfig(resolution=20), "diffusion.resolution"),
        (lambda: DiffusionConfig(resolution=0), "diffusion.resolution"),
        (lambda: DiffusionConfig(latent_space="VAE"), "diffusion.latent_space"),
        (lambda: DiffusionConfig(prediction_type="sample"), "diffusion.prediction_type"),
        (lambda: DiffusionConfig(beta_schedule="cosine"), "diffusion.beta_schedule"),
        (lambda: DiffusionConfig(torch_dtype="fp16"), "diffusion.torch_dtype"),
        (lambda: LLMConfig(max_length=16), "llm.max_length"),
        (lambda: LLMConfig(hidden_size=10, num_heads=4), "llm.hidden_size"),
        (lambda: LLMConfig(torch_dtype="half"), "llm.torch_dtype"),
        (lambda: LLMConfig(family="falcon"), "llm.family"),
        (lambda: PeftSettings(lora_target_modules=[]), "peft.lora_target_modules"),
        (lambda: VokenConfig(num_vokens=0), "vokens.num_vokens"),
        (lambda: PeftSettings(lora_r=0), "peft.lora_r"),
        (lambda: PeftSettings(method="ia3"), "peft.method"),
        (lambda: LossConfig(text_weight=-1.0), "loss.text_weight"),
        (lambda: LossConfig(cap_weight=-0.5), "loss.cap_weight"),
        (lambda: LossConfig(min_snr_gamma=0.0), "loss.min_snr_gamma"),
    ],
)
def test_invalid_values_raise_config_error_naming_the_field(make, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        make()


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_boundary_values_are_accepted():
    GuidanceConfig(cfg_dropout=0.0)
    LossConfig(cap_weight=0.0, min_snr_gamma=None)
    DiffusionConfig(resolution=8, latent_space="vae", prediction_type="v_prediction")
    MapperConfig(width=12, num_heads=4)
    LLMConfig(max_length=17)
