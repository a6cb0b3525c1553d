"""Typed configuration for every MiniGPT-5 component.

Each component takes its own dataclass. Defaults are the ``tiny`` preset, which
builds from random init with nothing downloaded; ``configs/model/paper.yaml``
sets the paper's models and sizes. A component whose ``path`` is set is loaded
from that local folder or hub id instead of being built from the tiny sizes.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional, get_args


class ConfigError(ValueError):
    """A configuration value is out of range or inconsistent."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    # Literal annotations are only enforced by the CLI parser; direct construction needs this.
    _check(value in choices, f"{name} must be one of {', '.join(choices)}; got {value!r}")


_DTYPES = ("float32", "bfloat16", "float16")

# The LLM families built and tested tiny (minigpt5/families.py; docs/models.md), by transformers' model_type.
LLMFamily = Literal["llama", "qwen2", "mistral", "gemma", "gemma2", "phi3", "gpt_neox"]
LLM_FAMILIES: tuple[str, ...] = get_args(LLMFamily)


@dataclass
class LLMConfig:
    """The causal language model and its tokenizer."""

    path: Optional[str] = None  # hub id or local folder (any causal LM; its family is its config's); None builds a tiny one
    family: LLMFamily = "llama"  # tiny only: which transformers family the tiny LLM is built from
    hidden_size: int = 64  # tiny only
    num_layers: int = 2  # tiny only
    num_heads: int = 4  # tiny only
    intermediate_size: int = 128  # tiny only
    max_length: int = 64  # longest token sequence fed to the LLM
    torch_dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # weights of the frozen LLM
    gradient_checkpointing: bool = False  # recompute each decoder layer in the backward: less memory, ~1 more forward

    def __post_init__(self) -> None:
        _check(self.max_length > 16, f"llm.max_length must be > 16, got {self.max_length}")
        _check(self.hidden_size % self.num_heads == 0, "llm.hidden_size must be divisible by llm.num_heads")
        _check_choice("llm.torch_dtype", self.torch_dtype, _DTYPES)
        _check_choice("llm.family", self.family, LLM_FAMILIES)


@dataclass
class VokenConfig:
    """Generative vokens appended to the vocabulary."""

    num_vokens: int = 8  # [IMG0]..[IMG7]
    token_format: str = "[IMG{}]"

    def __post_init__(self) -> None:
        _check(self.num_vokens >= 1, f"vokens.num_vokens must be >= 1, got {self.num_vokens}")

    @property
    def tokens(self) -> list[str]:
        return [self.token_format.format(i) for i in range(self.num_vokens)]


@dataclass
class MapperConfig:
    """Feature mapper: MLP then an encoder-decoder transformer reading learnable queries."""

    width: int = 64  # MLP output and transformer width
    num_encoder_layers: int = 1
    num_decoder_layers: int = 1
    num_heads: int = 4
    ff_size: int = 128
    num_queries: int = 77  # SD's text-encoder sequence length
    dropout: float = 0.0
    train_mlp_and_queries: bool = True  # the paper freezes the first MLP and the queries in stage 2
    query_init_std: float = 0.02  # std of the queries' normal init (the official code: 1.0, torch.randn)

    def __post_init__(self) -> None:
        _check(self.width % self.num_heads == 0, "mapper.width must be divisible by mapper.num_heads")
        _check(self.num_queries >= 1, "mapper.num_queries must be >= 1")
        _check(self.query_init_std > 0, f"mapper.query_init_std must be > 0, got {self.query_init_std}")
        _check(0.0 <= self.dropout < 1.0, f"mapper.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class DiffusionConfig:
    """The frozen Stable Diffusion parts: text encoder, UNet, latent space, scheduler."""

    path: Optional[str] = None  # diffusers folder or hub id; None builds tiny random parts
    # which decoder: sd (SD 1.x/2.x), sdxl (two text encoders, pooled embedding, time ids), sd3 (a flow-matching
    # SD3Transformer2DModel), or auto: the folder's model_index.json _class_name (sd without one, and when tiny)
    kind: Literal["auto", "sd", "sdxl", "sd3"] = "auto"
    resolution: int = 16  # target images are padded square and resized to this
    latent_space: Literal["vae", "pixel"] = "pixel"  # tiny default: diffuse pixels directly
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"  # tiny only; loaded from path otherwise
    num_train_timesteps: int = 1000  # tiny only
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"  # tiny only (diffusers' names)
    cross_attention_dim: int = 32  # tiny only (text encoder width; sdxl: two encoders of half of it each)
    unet_channels: tuple[int, ...] = (32, 64)  # tiny only
    vae_channels: tuple[int, ...] = (16, 32)  # tiny only (latent_space vae): one encoder block per width
    vae_layers_per_block: int = 1  # tiny only (SD's VAE has 2)
    text_encoder_layers: int = 2  # tiny only
    transformer_layers: int = 2  # tiny sd3 only: SD3Transformer2DModel blocks
    transformer_width: Optional[int] = None  # tiny sd3 only: its attention width (heads of 8); None: cross_attention_dim
    text_max_length: int = 77  # caption tokens for the SD text encoder
    torch_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    gradient_checkpointing: bool = False  # recompute each UNet down/mid/up block in the backward

    def __post_init__(self) -> None:
        _check(self.resolution >= 8 and self.resolution % 8 == 0,
               f"diffusion.resolution must be a positive multiple of 8, got {self.resolution}")
        _check_choice("diffusion.kind", self.kind, ("auto", "sd", "sdxl", "sd3"))
        _check_choice("diffusion.latent_space", self.latent_space, ("vae", "pixel"))
        _check_choice("diffusion.prediction_type", self.prediction_type, ("epsilon", "v_prediction"))
        _check_choice("diffusion.beta_schedule", self.beta_schedule, ("linear", "scaled_linear", "squaredcos_cap_v2"))
        _check_choice("diffusion.torch_dtype", self.torch_dtype, _DTYPES)
        _check(len(self.vae_channels) >= 1 and self.vae_layers_per_block >= 1,
               "diffusion.vae_channels needs at least one width and vae_layers_per_block must be >= 1")
        _check(self.transformer_layers >= 1 and (self.transformer_width or 8) % 8 == 0,
               "diffusion.transformer_layers must be >= 1 and transformer_width a multiple of 8 (heads of 8)")
        self.unet_channels = tuple(self.unet_channels)
        self.vae_channels = tuple(self.vae_channels)


@dataclass
class VisionConfig:
    """Frozen image encoder for images in the context (stage 2), feeding a trainable projection."""

    kind: Literal["none", "clip", "blip2"] = "none"  # none: no input-side images (stage 1)
    path: Optional[str] = None  # CLIP vision tower, or BLIP-2 (ViT + Q-Former); None builds a tiny one
    image_size: int = 32  # tiny only; a loaded tower uses its own
    hidden_size: int = 32  # tiny only
    num_layers: int = 1  # tiny only
    patch_size: int = 16  # tiny only
    num_query_tokens: int = 4  # tiny blip2 only (the paper's Q-Former has 32)
    torch_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    projection_path: Optional[str] = None  # MiniGPT-4 checkpoint (.pth) whose llama_proj initialises the projection
    train_projection: bool = True  # False freezes the projection (the official code, from MiniGPT-4's weights)

    def __post_init__(self) -> None:
        _check_choice("vision.kind", self.kind, ("none", "clip", "blip2"))
        _check_choice("vision.torch_dtype", self.torch_dtype, _DTYPES)
        _check(self.image_size % self.patch_size == 0, "vision.image_size must be a multiple of vision.patch_size")
        _check(self.kind == "none" or self.train_projection or self.projection_path is not None,
               "vision.train_projection=false freezes the input projection, so it needs pretrained weights: "
               "set vision.projection_path (MiniGPT-4's prerained_minigpt4_7b.pth)")


@dataclass
class PeftSettings:
    """Parameter-efficient adapter on the frozen LLM."""

    method: Literal["none", "lora", "prefix"] = "none"  # stage 1 trains no adapter
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    # None: the family's attention query and value projections (the paper's q and v; minigpt5/families.py);
    # [all-linear]: every linear layer of the decoder (PEFT's shorthand); else module names
    lora_target_modules: Optional[tuple[str, ...]] = None
    num_virtual_tokens: int = 32  # prefix tuning
    prefix_projection: bool = False  # prefix tuning: prefixes through a 2-layer MLP (PEFT's prefix_projection)
    prefix_hidden_size: int = 1024  # prefix tuning with prefix_projection: the MLP's hidden width

    def __post_init__(self) -> None:
        _check_choice("peft.method", self.method, ("none", "lora", "prefix"))
        _check(self.lora_r >= 1, f"peft.lora_r must be >= 1, got {self.lora_r}")
        _check(self.num_virtual_tokens >= 1 and self.prefix_hidden_size >= 1,
               "peft.num_virtual_tokens and peft.prefix_hidden_size must be >= 1")
        if self.lora_target_modules is not None:
            self.lora_target_modules = tuple(self.lora_target_modules)
            _check(len(self.lora_target_modules) > 0, "peft.lora_target_modules must name a module, or be null")


@dataclass
class LossConfig:
    """Loss weights and diffusion-loss options."""

    text_weight: float = 0.01
    ldm_weight: float = 1.0
    cap_weight: float = 0.1
    min_snr_gamma: Optional[float] = 5.0  # None turns Min-SNR weighting off (not used by flow matching)
    # flow matching (diffusion.kind sd3): the density training timesteps are drawn from, as diffusers' SD3
    # example: logit_normal (sigmoid of a normal with these mean and std) or uniform
    timestep_density: Literal["logit_normal", "uniform"] = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    text_on_caption: bool = True  # stage 1: the caption carries text loss too (official: only the target after it)

    def __post_init__(self) -> None:
        for name in ("text_weight", "ldm_weight", "cap_weight"):
            _check(getattr(self, name) >= 0, f"loss.{name} must be >= 0, got {getattr(self, name)}")
        _check(self.min_snr_gamma is None or self.min_snr_gamma > 0, "loss.min_snr_gamma must be > 0 or null")
        _check_choice("loss.timestep_density", self.timestep_density, ("logit_normal", "uniform"))
        _check(self.logit_std > 0, f"loss.logit_std must be > 0, got {self.logit_std}")


# Sampling schedulers by name (diffusers classes in minigpt5.guidance.SAMPLERS), each built from
# the training scheduler's config so its betas and prediction type carry over.
# flow-euler is the flow-matching decoders' (diffusion.kind sd3), the others the rest's.
Sampler = Literal["pndm", "ddim", "ddpm", "dpm++", "unipc", "euler", "euler-a", "flow-euler"]
SAMPLER_NAMES: tuple[str, ...] = get_args(Sampler)


@dataclass
class AugmentConfig:
    """Training-time image augmentation (never at validation or inference)."""

    hflip: float = 0.0  # probability of a horizontal flip, drawn per target and per context image

    def __post_init__(self) -> None:
        _check(0.0 <= self.hflip <= 1.0, f"augment.hflip must be a probability in [0, 1], got {self.hflip}")


@dataclass
class GuidanceConfig:
    """Classifier-free guidance: dropout in training, guided sampling at inference."""

    cfg_dropout: float = 0.1  # probability a target's voken features are zeroed in training
    scale: float = 7.5
    num_inference_steps: int = 50
    # the tiny preset's: on the demo's held-out stories, picture colour / shape right 0.97 / 0.92
    # with ddim, 1.00 / 0.97 with dpm++ (same checkpoint); the paper preset sets the SD pipeline's pndm
    sampler: Sampler = "dpm++"

    def __post_init__(self) -> None:
        _check(0.0 <= self.cfg_dropout < 1.0, f"guidance.cfg_dropout must be in [0, 1), got {self.cfg_dropout}")
        _check(self.num_inference_steps >= 1, "guidance.num_inference_steps must be >= 1")
        _check_choice("guidance.sampler", self.sampler, SAMPLER_NAMES)


_TEMPLATES = ("plain", "minigpt4", "chat")


@dataclass
class TemplateConfig:
    """How an example's text, images and vokens are worded into tokens (``minigpt5.templates``)."""

    name: Literal["plain", "minigpt4", "chat"] = "plain"  # plain: <s> text [IMG0..] </s>; minigpt4: the official
    # ###Human: .. ###Assistant: .. ###; chat: the tokenizer's own chat template
    prompt: str = ""  # plain only: text before every sequence; masked out of the text loss
    chat_template: Optional[str] = None  # chat only: a Jinja chat template used instead of the tokenizer's own
    normalise_captions: bool = False  # CC3M captions lower-cased, punctuation to spaces (official pre_caption)
    instruction_every: int = 0  # 1 in this many CC3M pairs (by key) is also given as an instruction row; 0: none

    def __post_init__(self) -> None:
        _check_choice("template.name", self.name, _TEMPLATES)
        _check(self.instruction_every >= 0, f"template.instruction_every must be >= 0, got {self.instruction_every}")
        _check(self.name == "plain" or not self.prompt,
               f"template.prompt is the plain template's; the {self.name} template words its own prompt")
        _check(self.name == "chat" or self.chat_template is None, "template.chat_template needs template.name chat")


@dataclass
class MiniGPT5Config:
    """Everything needed to build a MiniGPT5 model."""

    llm: LLMConfig = field(default_factory=LLMConfig)
    vokens: VokenConfig = field(default_factory=VokenConfig)
    mapper: MapperConfig = field(default_factory=MapperConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    peft: PeftSettings = field(default_factory=PeftSettings)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    template: TemplateConfig = field(default_factory=TemplateConfig)


# Settings a run may change when it resumes from a checkpoint: they do not change what the
# trained weights mean (losses, guidance, augmentation and memory savings may all change).
RESUMABLE_SECTIONS = ("loss", "guidance", "augment")
RESUMABLE_KEYS = frozenset({
    "llm.max_length", "llm.gradient_checkpointing", "llm.torch_dtype", "diffusion.gradient_checkpointing",
    "diffusion.torch_dtype", "vision.torch_dtype", "mapper.dropout", "peft.lora_dropout",
})


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}.").items()}
    return {prefix[:-1]: list(value) if isinstance(value, tuple) else value}


def model_differences(
    saved: Any, current: "MiniGPT5Config", resolve: Optional[Callable[[str, Any], Any]] = None
) -> list[str]:
    """The settings that make a checkpoint of ``saved`` (a config or its dict) meaningless
    for ``current``, as ``key: saved -> current``; harmless ones (above) are left out.
    ``resolve(key, value)``: what a value means for the model at hand (e.g. null LoRA
    targets are the LLM family's q and v), compared in place of the values as written."""
    old, new = _flat(saved), _flat(current)
    if resolve is not None:
        old, new = ({k: resolve(k, v) for k, v in side.items()} for side in (old, new))
    no_adapter = old.get("peft.method") == new.get("peft.method") == "none"
    changed = []
    for key in sorted(old.keys() & new.keys()):  # a setting one side lacks is older or newer than it
        if key.split(".")[0] in RESUMABLE_SECTIONS or key in RESUMABLE_KEYS:
            continue
        if no_adapter and key.startswith("peft.") and key != "peft.method":
            continue  # the adapter's settings mean nothing without one
        if old.get(key) != new.get(key):
            changed.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return changed


def dataclass_from(cls: type, values: dict[str, Any]) -> Any:
    """``cls`` (a dataclass, nested ones included) from a dict of its fields."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            value = values[f.name]
            kwargs[f.name] = dataclass_from(hints[f.name], value) if dataclasses.is_dataclass(hints[f.name]) else value
    return cls(**kwargs)


def stage_of(cfg: MiniGPT5Config) -> int:
    """The training stage a config describes: 2 (MLS) with an LLM adapter or a vision tower for
    context images, else 1 (UAS: vokens and mapper only)."""
    return 2 if cfg.peft.method != "none" or cfg.vision.kind != "none" else 1
