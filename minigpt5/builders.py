"""Build every part of MiniGPT-5 from config: tiny random parts, or real weights.

A component whose ``path`` is unset is built from the tiny sizes with a fixed seed,
so the frozen tiny weights are a function of the config alone (a resumed run in a
new process gets the same ones). A component with a ``path`` is loaded from that
local folder or hub id; failures name what is missing and how to provide it.

``empty=True`` builds every component from its architecture config alone, for use
under ``torch.device("meta")``: no weights are read, and the paper's hub ids resolve
to the configs shipped in ``minigpt5/architectures`` (tokenizers are the tiny one,
with the vokens placed after the configured vocabulary).
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    FlowMatchEulerDiscreteScheduler,
    SchedulerMixin,
    SD3Transformer2DModel,
    UNet2DConditionModel,
)
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from minigpt5.architectures import architecture_source
from minigpt5.config import ConfigError, DiffusionConfig, LLMConfig, MiniGPT5Config
from minigpt5.decoders import (
    DENOISERS,
    FIRST_ENCODERS,
    TRAINING_SCHEDULERS,
    check_decoder,
    condition_widths,
    decoder_kind,
    join_encoders,
)
from minigpt5.families import tiny_llm
from minigpt5.loading import WeightsNotFoundError, load_pretrained  # noqa: F401  (re-exported)
from minigpt5.randomness import Generators
from minigpt5.sdxl import TIME_IDS, DualTextEncoder
from minigpt5.tokenizer import build_tiny_tokenizer
from minigpt5.vision import IMAGE_TOKEN, VisionTower
from minigpt5.vokens import add_voken_tokens

TINY_SEED = 0
TINY_TIME_EMBED = 8  # the tiny SDXL UNet's width per time id (SDXL base: 256)

# The sampling settings of SD 2.1 base's scheduler (minigpt5/architectures/stable-diffusion-2-1-base/
# scheduler/scheduler_config.json), given to the tiny scheduler in latent and pixel space alike, so that
# the tiny parts sample as diffusers' StableDiffusionPipeline samples them (benchmarks/peers.py checks it).
# Training (random timesteps, add_noise) reads none of them. Where diffusers' defaults differ:
SD_SAMPLING = {
    # DDPMScheduler's default is 0; StableDiffusionPipeline rewrites 0 to 1 with a deprecation warning.
    # Leading timestep spacing (pndm, ddim, ddpm) then samples t = 1, 1 + k, ..., not 0, k, ...
    "steps_offset": 1,
    # DDIM's default is True (the last step lands on alpha 1); PNDM's and SD's are False (alpha at t = 0).
    # Not a DDPMScheduler argument: kept in its config for the samplers built from it, as SD's file is.
    "set_alpha_to_one": False,
    # DDPMScheduler's default is True, which DDIM inherits: every step clips its x0 estimate to [-1, 1].
    # Meaningless for latents (the pipeline forces it off), and in pixel space, where it could apply,
    # measured to hurt: on the demo's stage-1 checkpoint (72 images, DDIM, guidance 2; colour / shape
    # right) 50 steps gave 0.74 / 0.67 clipped, 0.99 / 0.93 not; 10 steps 0.99 / 0.92 and 0.99 / 0.96.
    "clip_sample": False,
}


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Floating-point tensors created inside are ``dtype``."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


class PixelSpace(nn.Module):
    """Identity latent space for the tiny preset: the UNet diffuses pixels directly."""

    scaling_factor = 1.0
    downsample_factor = 1
    channels = 3

    def encode(self, pixels: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        return pixels

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents


class VAELatents(nn.Module):
    """A diffusers AutoencoderKL as a latent space, latents scaled by its scaling factor.

    Encoding is split in two so a latent cache can store the deterministic half:
    :meth:`moments` (the encoder's Gaussian, mean and log-variance, float32) and
    :meth:`sample` (one draw from it with ``generator``, scaled). Cached moments and
    moments computed now give the same latents for the same generator.
    """

    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = vae.config.get("shift_factor")  # SD3's VAE: latents are (z - shift) * scale
        self.downsample_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.channels = int(vae.config.latent_channels)

    @property
    def dtype(self) -> torch.dtype:
        # One parameter is enough; diffusers' own .dtype walks every submodule.
        return next(self.vae.parameters()).dtype

    def moments(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (N, 3, H, W) in [-1, 1] -> the encoder's mean and log-variance (N, 2c, h, w), float32."""
        return self.vae.encode(pixels.to(self.dtype)).latent_dist.parameters.float()

    def sample(self, moments: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        """Moments (N, 2c, h, w) -> one latent draw (N, c, h, w) times the scaling factor."""
        z = DiagonalGaussianDistribution(moments.float()).sample(generator)
        if self.shift_factor is not None:
            z = z - self.shift_factor
        return z * self.scaling_factor

    def encode(self, pixels: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        return self.sample(self.moments(pixels), generator)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        latents = latents.to(self.dtype) / self.scaling_factor
        if self.shift_factor is not None:
            latents = latents + self.shift_factor
        return self.vae.decode(latents).sample


@dataclass
class Components:
    """The pretrained (or tiny) parts MiniGPT5 is assembled from."""

    llm: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    voken_ids: list[int]
    text_encoder: nn.Module  # SD's CLIPTextModel, or SDXL's or SD3's two as a DualTextEncoder
    sd_tokenizer: PreTrainedTokenizerBase
    unet: nn.Module  # the denoiser: a UNet2DConditionModel, or an SD3Transformer2DModel (diffusion.kind sd3)
    latents: nn.Module
    scheduler: SchedulerMixin  # DDPMScheduler, or FlowMatchEulerDiscreteScheduler (sd3)
    vision: Optional[VisionTower] = None  # None when vision.kind is "none"


# ---- tokenizers (also used by the data modules, without building any model) ----

def llm_config(cfg: LLMConfig, empty: bool = False) -> AutoConfig:
    """The Hugging Face config of a loaded LLM (``cfg.path`` set), read without weights."""
    source = architecture_source(cfg.path) if empty else cfg.path
    return load_pretrained("LLM config", source, AutoConfig.from_pretrained)


def llm_embedding_rows(cfg: LLMConfig, empty: bool = False) -> int:
    """Rows of the LLM's input embedding table, read from its config only."""
    if cfg.path is None:
        return len(build_tiny_tokenizer())
    return llm_config(cfg, empty).vocab_size


def build_llm_tokenizer(cfg: MiniGPT5Config, empty: bool = False) -> tuple[PreTrainedTokenizerBase, list[int]]:
    """The LLM tokenizer with the vokens added, and the voken ids."""
    if cfg.llm.path is None or empty:
        tokenizer = build_tiny_tokenizer()
    else:
        tokenizer = load_pretrained("LLM tokenizer", cfg.llm.path, AutoTokenizer.from_pretrained)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    voken_ids = add_voken_tokens(tokenizer, cfg.vokens, llm_embedding_rows(cfg.llm, empty))
    # The input-image placeholder comes right after the vokens; its embedding is never
    # looked up (projected image tokens replace it), so the LLM needs no new row for it.
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    return tokenizer, voken_ids


def build_sd_tokenizer(cfg: DiffusionConfig, empty: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer of the SD text encoder (the tiny BPE for tiny or empty parts)."""
    if cfg.path is None or empty:
        return build_tiny_tokenizer()
    return load_pretrained("SD tokenizer", cfg.path, AutoTokenizer.from_pretrained, subfolder="tokenizer")


# ---- models ----

def build_llm(cfg: LLMConfig, vocab_size: int, empty: bool = False, quantization: Any = None) -> PreTrainedModel:
    """The LLM; ``quantization``: a transformers quantization config it is loaded under
    (:func:`minigpt5.inference.quantization_config`)."""
    if cfg.path is not None and empty:
        return AutoModelForCausalLM.from_config(llm_config(cfg, empty=True), dtype=_dtype(cfg.torch_dtype))
    if cfg.path is not None:
        extra = {"quantization_config": quantization} if quantization is not None else {}
        return load_pretrained(
            "LLM", cfg.path, AutoModelForCausalLM.from_pretrained, dtype=_dtype(cfg.torch_dtype), **extra
        )
    llm = tiny_llm(cfg, vocab_size)
    if quantization is None:
        return llm
    # transformers quantizes while it loads: the seeded tiny LLM goes through a folder, as a real one would.
    with tempfile.TemporaryDirectory() as folder:
        llm.save_pretrained(folder)
        return AutoModelForCausalLM.from_pretrained(folder, dtype=llm.dtype, quantization_config=quantization)


def tiny_unet(cfg: DiffusionConfig, channels: int, sample_size: int, **extra: Any) -> UNet2DConditionModel:
    """~1M-parameter UNet: cross-attention only below full resolution and in the mid block
    (``extra``: further UNet settings, SDXL's added conditioning)."""
    n = len(cfg.unet_channels)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=cfg.unet_channels,
        layers_per_block=1,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=cfg.cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
        **extra,
    )


def build_latent_space(cfg: DiffusionConfig) -> nn.Module:
    """The latent space alone: SD's VAE from ``path``, a tiny seeded VAE, or pixel space.

    The tiny VAE is seeded on its own, so building it here or inside
    :func:`build_diffusion` gives the same weights (``minigpt5 data encode-latents``
    builds only this part).
    """
    if cfg.latent_space == "pixel":
        return PixelSpace()
    dtype = _dtype(cfg.torch_dtype)
    if cfg.path is not None:
        vae = load_pretrained("SD VAE", cfg.path, AutoencoderKL.from_pretrained, subfolder="vae", torch_dtype=dtype)
        return VAELatents(vae)
    blocks = len(cfg.vae_channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * blocks,
            up_block_types=("UpDecoderBlock2D",) * blocks,
            block_out_channels=cfg.vae_channels,
            layers_per_block=cfg.vae_layers_per_block,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=cfg.resolution,
        )
    return VAELatents(vae).to(dtype)


def latent_space_name(cfg: DiffusionConfig) -> str:
    """What identifies the latent space's weights, from the config alone (recorded in latent caches)."""
    if cfg.latent_space == "pixel":
        return "pixel"
    if cfg.path is not None:
        return f"vae:{cfg.path}"
    return f"tiny-vae:channels={list(cfg.vae_channels)},layers={cfg.vae_layers_per_block},seed={TINY_SEED}"


def load_text_encoder(cfg: DiffusionConfig) -> nn.Module:
    """SD's text encoder (SDXL's or SD3's two, as a :class:`DualTextEncoder`) from ``cfg.path``, in ``cfg.torch_dtype``."""
    dtype = _dtype(cfg.torch_dtype)
    kind = decoder_kind(cfg)
    first = load_pretrained("SD text encoder", cfg.path, FIRST_ENCODERS[kind].from_pretrained,
                            subfolder="text_encoder", dtype=dtype)
    if kind == "sd":
        return first
    second = load_pretrained(f"{kind} text encoder 2", cfg.path, CLIPTextModelWithProjection.from_pretrained,
                             subfolder="text_encoder_2", dtype=dtype)
    tokenizer = build_sd_tokenizer(cfg)
    tokenizer_2 = load_pretrained(f"{kind} tokenizer 2", cfg.path, AutoTokenizer.from_pretrained, subfolder="tokenizer_2")
    if tokenizer.get_vocab() != tokenizer_2.get_vocab():
        raise ValueError(f"{cfg.path}: tokenizer and tokenizer_2 have different vocabularies; both encoders read "
                         "the first tokenizer's ids here, which needs one vocabulary (SDXL's and SD3's have)")
    joint = None
    if kind == "sd3":
        transformer = load_pretrained("SD3 transformer config", cfg.path, SD3Transformer2DModel.load_config,
                                      subfolder="transformer")
        joint = transformer["joint_attention_dim"]
    return join_encoders(kind, first, second, tokenizer.eos_token_id, tokenizer.pad_token_id,
                         tokenizer_2.pad_token_id, joint)


def build_text_encoder(cfg: MiniGPT5Config) -> PreTrainedModel:
    """The SD text encoder alone, with the weights :func:`build_components` gives it
    (``minigpt5 data encode-latents --captions`` needs only this part). The tiny random one
    is drawn after the LLM from one seed, so that build runs whole."""
    if cfg.diffusion.path is not None:
        return load_text_encoder(cfg.diffusion)
    return build_components(cfg).text_encoder


def text_encoder_name(cfg: MiniGPT5Config) -> str:
    """What identifies the SD text encoder's weights, from the config alone (recorded in caption caches).

    The tiny random encoder is drawn from the tiny seed after the LLM, so the LLM's path or
    sizes are part of its name.
    """
    d = cfg.diffusion
    if d.path is not None:
        return f"clip:{d.path}"
    llm = cfg.llm.path or (f"tiny-{cfg.llm.family}:hidden={cfg.llm.hidden_size},layers={cfg.llm.num_layers},"
                           f"ff={cfg.llm.intermediate_size},heads={cfg.llm.num_heads}")
    kind = "" if decoder_kind(d) == "sd" else f"{decoder_kind(d)}-"
    return (f"tiny-{kind}clip:width={d.cross_attention_dim},layers={d.text_encoder_layers},positions={d.text_max_length},"
            f"seed={TINY_SEED},after {llm}")


def empty_diffusion(cfg: DiffusionConfig) -> tuple[nn.Module, nn.Module, nn.Module, SchedulerMixin]:
    """The loaded SD parts of ``cfg.path`` built from their configs only (no weights read)."""
    dtype = _dtype(cfg.torch_dtype)
    source = architecture_source(cfg.path)
    kind = decoder_kind(cfg, empty=True)
    subfolder, denoiser_class = DENOISERS[kind]

    def read(what: str, read_config: Callable[..., Any], subfolder: str) -> Any:
        return load_pretrained(f"SD {what} config", source, read_config, subfolder=subfolder)

    scheduler = load_pretrained("SD scheduler", source, TRAINING_SCHEDULERS[kind].from_pretrained, subfolder="scheduler")
    with default_dtype(dtype):  # created in the dtype, not cast (diffusers warns on a cast)
        text_encoder = FIRST_ENCODERS[kind](read("text encoder", CLIPTextConfig.from_pretrained, "text_encoder"))
        unet = denoiser_class.from_config(read(subfolder, denoiser_class.load_config, subfolder))
        if kind != "sd":
            second = CLIPTextModelWithProjection(read("text encoder 2", CLIPTextConfig.from_pretrained, "text_encoder_2"))
            text_encoder = join_config_ids(kind, text_encoder, second, unet)
        if cfg.latent_space == "vae":
            vae = AutoencoderKL.from_config(read("VAE", AutoencoderKL.load_config, "vae"))
            return text_encoder, unet, VAELatents(vae), scheduler
    return text_encoder, unet, PixelSpace(), scheduler


def join_config_ids(kind: str, first: PreTrainedModel, second: CLIPTextModelWithProjection,
                    denoiser: nn.Module) -> DualTextEncoder:
    """Two encoders joined with the end and padding ids of the second's config for both (tiny and
    empty builds: the tiny tokenizer's ids, or ids no meta build reads)."""
    config = second.config
    return join_encoders(kind, first, second, config.eos_token_id, config.pad_token_id, config.pad_token_id,
                         condition_widths(denoiser)[0])


def tiny_clip_config(cfg: DiffusionConfig, sd_vocab: int, width: int, **extra: Any) -> CLIPTextConfig:
    """A tiny CLIP text encoder's config, ``width`` wide, with the tiny tokenizer's special ids."""
    return CLIPTextConfig(
        vocab_size=sd_vocab,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=cfg.text_encoder_layers,
        num_attention_heads=max(1, width // 16),
        max_position_embeddings=cfg.text_max_length,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        **extra,
    )


def tiny_text_and_unet(cfg: DiffusionConfig, sd_vocab: int, latents: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The tiny random text encoder(s) and denoiser of ``cfg``'s decoder kind (from the global RNG)."""
    width = cfg.cross_attention_dim
    sample_size = cfg.resolution // latents.downsample_factor
    kind = decoder_kind(cfg)
    if kind == "sd":
        text_encoder = CLIPTextModel(tiny_clip_config(cfg, sd_vocab, width))
        return text_encoder, tiny_unet(cfg, latents.channels, sample_size)
    if width % 4:
        raise ConfigError(f"diffusion.cross_attention_dim must be a multiple of 4 for a tiny {kind} (two encoders of "
                          f"half its width, each projecting to half of that or more), got {width}")
    half = width // 2  # each encoder's width
    pooled = half if kind == "sdxl" else half // 2  # SDXL pools from the second encoder, SD3 from both
    first = FIRST_ENCODERS[kind](tiny_clip_config(cfg, sd_vocab, half, projection_dim=pooled))
    second = CLIPTextModelWithProjection(tiny_clip_config(cfg, sd_vocab, half, projection_dim=pooled))
    if kind == "sdxl":
        denoiser = tiny_unet(
            cfg, latents.channels, sample_size, addition_embed_type="text_time",
            addition_time_embed_dim=TINY_TIME_EMBED, projection_class_embeddings_input_dim=half + TIME_IDS * TINY_TIME_EMBED,
        )
    else:
        inner = cfg.transformer_width or width
        denoiser = SD3Transformer2DModel(
            sample_size=sample_size, patch_size=2, in_channels=latents.channels, out_channels=latents.channels,
            num_layers=cfg.transformer_layers, attention_head_dim=8, num_attention_heads=inner // 8,
            joint_attention_dim=width, caption_projection_dim=inner, pooled_projection_dim=2 * pooled,
            pos_embed_max_size=sample_size // 2,
        )
    return join_config_ids(kind, first, second, denoiser), denoiser


def build_diffusion(
    cfg: DiffusionConfig, sd_vocab: int, empty: bool = False
) -> tuple[nn.Module, nn.Module, nn.Module, SchedulerMixin]:
    """Text encoder(s), denoiser (UNet or SD3 transformer), latent space and training scheduler,
    checked to fit each other."""
    dtype = _dtype(cfg.torch_dtype)
    if cfg.path is not None and empty:
        text_encoder, unet, latents, scheduler = empty_diffusion(cfg)
        check_decoder(decoder_kind(cfg, empty=True), text_encoder, unet)
        return text_encoder, unet, latents, scheduler
    latents = build_latent_space(cfg)
    kind = decoder_kind(cfg)
    if cfg.path is not None:
        text_encoder = load_text_encoder(cfg)
        subfolder, denoiser_class = DENOISERS[kind]
        unet = load_pretrained(
            f"SD {subfolder}", cfg.path, denoiser_class.from_pretrained, subfolder=subfolder, torch_dtype=dtype
        )
        check_decoder(kind, text_encoder, unet)
        scheduler = load_pretrained("SD scheduler", cfg.path, TRAINING_SCHEDULERS[kind].from_pretrained,
                                    subfolder="scheduler")
        return text_encoder, unet, latents, scheduler
    text_encoder, unet = tiny_text_and_unet(cfg, sd_vocab, latents)
    if kind == "sd3":
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=cfg.num_train_timesteps)
    else:
        scheduler = DDPMScheduler.from_config({
            "num_train_timesteps": cfg.num_train_timesteps, "prediction_type": cfg.prediction_type,
            "beta_schedule": cfg.beta_schedule, **SD_SAMPLING,
        })
    if dtype != torch.float32:
        text_encoder, unet = text_encoder.to(dtype), unet.to(dtype)
    return text_encoder, unet, latents, scheduler


def build_components(cfg: MiniGPT5Config, empty: bool = False, quantization: Any = None) -> Components:
    """All parts for ``cfg``; tiny parts use a fixed seed and leave the global RNG as it was.

    ``empty``: loaded parts are built from their architecture configs, no weights read
    (meant for ``torch.device("meta")``; see the module docstring). ``quantization``: the
    LLM's transformers quantization config, if any.
    """
    tokenizer, voken_ids = build_llm_tokenizer(cfg, empty)
    sd_tokenizer = build_sd_tokenizer(cfg.diffusion, empty)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        llm = build_llm(cfg.llm, vocab_size=voken_ids[0], empty=empty, quantization=quantization)
        text_encoder, unet, latents, scheduler = build_diffusion(cfg.diffusion, len(sd_tokenizer), empty)
        vision = VisionTower(cfg.vision, empty) if cfg.vision.kind != "none" else None
    return Components(llm, tokenizer, voken_ids, text_encoder, sd_tokenizer, unet, latents, scheduler, vision)
