"""MiniGPT5: a causal LLM with generative vokens driving a frozen Stable Diffusion UNet."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ContextManager, Optional

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from torch import nn

from minigpt5 import decoders
from minigpt5.adapters import apply_adapter, base_model, cache_argument, prefix_length
from minigpt5.builders import Components, VAELatents, build_components
from minigpt5.config import LossConfig, MiniGPT5Config, stage_of
from minigpt5.decoders import condition_widths
from minigpt5.families import check_llm, logit_softcap
from minigpt5.fingerprint import fingerprints
from minigpt5.guidance import build_sampler, drop_features, sample_latents
from minigpt5.images import flip_where
from minigpt5.layers import checkpoint_layers, layer_classes, unet_block_classes
from minigpt5.losses import cap_loss, text_loss
from minigpt5.mapper import FeatureMapper
from minigpt5.offload import Device, Offloader
from minigpt5.pretrained import PretrainedMixin
from minigpt5.projection import build_input_projection
from minigpt5.randomness import Generators, draw
from minigpt5.sdxl import DualTextEncoder
from minigpt5.sequences import Turn, pad_examples, tokenize_for_text_encoder
from minigpt5.templates import Conversation, Template, build_template, prepare_caption
from minigpt5.vision import IMAGE_TOKEN
from minigpt5.vokens import VokenRows

log = logging.getLogger(__name__)


@dataclass
class MiniGPT5Output:
    """Named, unweighted losses of one batch (``cap`` is None when not computed)."""

    text: torch.Tensor
    ldm: torch.Tensor
    cap: Optional[torch.Tensor] = None

    def named(self) -> dict[str, torch.Tensor]:
        losses = {"text": self.text, "ldm": self.ldm}
        if self.cap is not None:
            losses["cap"] = self.cap
        return losses

    def total(self, weights: LossConfig) -> torch.Tensor:
        total = weights.text_weight * self.text + weights.ldm_weight * self.ldm
        if self.cap is not None:
            total = total + weights.cap_weight * self.cap
        return total


@dataclass
class LLMStep:
    """What one LLM call (:meth:`MiniGPT5.llm_step`) returns."""

    logits: torch.Tensor  # (B, K, V + n) over the vocabulary and the vokens, at the last K positions fed
    hidden: torch.Tensor  # (B, k, D) last-layer states of the positions fed, after the final norm
    cache: Any = None  # the KV cache of every position so far (with use_cache), for the next step


def zero_through(module: nn.Module) -> torch.Tensor:
    """A zero that depends on every trainable parameter of ``module``.

    Added where a batch leaves a trainable part unused (no target image, no context image),
    so every trainable parameter gets a (zero) gradient in every step: DDP then needs no
    search for unused parameters (``find_unused_parameters=False``).
    """
    return sum(p.sum() for p in module.parameters() if p.requires_grad) * 0.0


def target_count(batch: dict[str, torch.Tensor]) -> int:
    """How many target images a batch holds, as pixels, cached moments or a mix of both."""
    key = next((k for k in ("target_cached", "target_latent_moments") if k in batch), "target_pixels")
    return len(batch[key])


def check_cached_shape(key: str, values: torch.Tensor, expected: tuple[int, ...], per: str, needs: str) -> None:
    """Raise naming batch ``key`` when its cached ``values`` (K, ...) are not ``expected`` per ``per``
    (``needs``: what in the model needs that shape)."""
    if tuple(values.shape[1:]) != expected:
        raise ValueError(f"cached {key} have shape {tuple(values.shape[1:])} per {per}; {needs} needs {expected}")


class MiniGPT5(PretrainedMixin, nn.Module):
    """LLM + voken rows + feature mapper + frozen SD parts.

    ``save_pretrained(folder)`` / ``MiniGPT5.from_pretrained(folder_or_hub_id)`` write and read one
    model folder (:mod:`minigpt5.pretrained`).

    Batch keys read by :meth:`forward`:
      input_ids, attention_mask, labels: (B, T) — labels -100 where no text loss;
      target_pixels: (N, 3, H, W) in [-1, 1], one per ``[IMG0]`` in input_ids, in
        row-major order of appearance;
      target_latent_moments: optional (K, 2c, h, w) cached VAE moments (mean, log-variance)
        of K of those targets, used instead of encoding them (see :meth:`target_latents`);
      target_cached: (N,) bool, which targets the moments are for, when only some are
        (without it, the moments are all N targets and target_pixels may be absent);
      caption_ids: optional (N, L) SD text-encoder ids of each target's caption (CAP loss);
      caption_embeddings: optional (K, L, C) cached text-encoder output on K of those captions,
        used instead of running the encoder (see :meth:`caption_targets`);
      caption_cached: (N,) bool, which captions the embeddings are for, when only some are;
      input_pixels: optional (M, 3, S, S) context images, tower-normalised, one per run of
        ``<ImageHere>`` placeholders in input_ids, in row-major order.
    """

    def __init__(self, cfg: MiniGPT5Config, parts: Optional[Components] = None) -> None:
        super().__init__()
        parts = parts or build_components(cfg)
        self.cfg = cfg
        # Values of the frozen parts as built, before an adapter joins the LLM; saved with
        # checkpoints, so one is never loaded over other frozen weights (minigpt5.fingerprint).
        self.frozen_fingerprint = fingerprints({
            "llm": parts.llm, "text_encoder": parts.text_encoder, "unet": parts.unet,
            "latents": parts.latents, "vision": parts.vision,
        })
        self.tokenizer = parts.tokenizer
        self.sd_tokenizer = parts.sd_tokenizer
        self.voken_ids = parts.voken_ids
        self.scheduler = parts.scheduler
        check_llm(parts.llm)
        self.vokens = VokenRows.mean_initialised(
            parts.voken_ids[0],
            cfg.vokens.num_vokens,
            parts.llm.get_input_embeddings().weight,
            parts.llm.get_output_embeddings().weight,
            logit_softcap(parts.llm.config),
        )
        self.llm, self._adapter_names = apply_adapter(parts.llm, cfg.peft)
        hidden = parts.llm.config.hidden_size
        # the denoiser's row width, and its pooled text embedding's (SDXL, SD3; None for SD)
        self.condition_width, self.pooled_width = condition_widths(parts.unet)
        self.mapper = FeatureMapper(cfg.mapper, hidden, self.condition_width, self.pooled_width)
        self.flow_matching = isinstance(parts.scheduler, FlowMatchEulerDiscreteScheduler)  # SD3's rectified flow
        self.text_encoder = parts.text_encoder
        self.unet = parts.unet
        self.latents = parts.latents
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.vision = parts.vision
        self.input_projection = (
            build_input_projection(parts.vision.width, hidden, cfg.vision.projection_path)
            if parts.vision is not None else None
        )
        if not cfg.vision.train_projection:  # frozen weights from a file (MiniGPT-4's): fingerprinted like the rest
            self.frozen_fingerprint.update(fingerprints({"input_projection": self.input_projection}))
        # diffusers' ``.dtype`` walks every submodule; the UNet's dtype is fixed by the config.
        self.unet_dtype = getattr(torch, cfg.diffusion.torch_dtype)
        self._null_caption: Optional[torch.Tensor] = None  # SD embedding of "", computed once
        self.offloader: Optional[Offloader] = None  # set by enable_offload
        self.mark_trainable()
        self.apply_activation_checkpointing()

    @cached_property
    def template(self) -> Template:
        """How prompts and captions are worded into tokens (built on first use: a model on the
        meta device has a stand-in tokenizer, without the real one's chat template)."""
        tokens = self.vision.num_tokens if self.vision is not None else 0
        return build_template(self.cfg, self.tokenizer, self.voken_ids, self.image_token_id, tokens)

    @classmethod
    def on_meta(cls, cfg: MiniGPT5Config) -> "MiniGPT5":
        """The model with every tensor on the meta device: sizes, dtypes and what trains,
        without memory or weights (the paper's models from their shipped configs)."""
        with torch.device("meta"):
            return cls(cfg, build_components(cfg, empty=True))

    @property
    def stage(self) -> int:
        """1 (UAS) or 2 (MLS), as the config describes (:func:`minigpt5.config.stage_of`)."""
        return stage_of(self.cfg)

    def require_vision(self, what: str) -> None:
        """Raise naming ``what`` when this model has no vision tower (a stage-1 model)."""
        if self.vision is None:
            raise ValueError(
                f"{what}: context images are a stage-2 feature, and this is a stage-{self.stage} model without a "
                "vision tower (vision.kind none); use a stage-2 (MLS) model, or leave the images out"
            )

    # ---- offloading ----

    def offloadable_parts(self) -> dict[str, nn.Module]:
        """The parts generation uses only now and then: SD's text encoder, UNet and latent space, the vision tower."""
        parts = {"text_encoder": self.text_encoder, "unet": self.unet, "latents": self.latents}
        return {**parts, "vision": self.vision} if self.vision is not None else parts

    def enable_offload(self, storage: Device = "cpu") -> Offloader:
        """Keep :meth:`offloadable_parts` on ``storage`` between uses (call after moving the model to its device)."""
        self.offloader = Offloader(self.offloadable_parts(), storage)
        return self.offloader

    def using(self, *parts: nn.Module) -> ContextManager[None]:
        """Run the body with ``parts`` on the execution device (the mapper's), where they are offloaded."""
        if self.offloader is None:
            return nullcontext()
        return self.offloader.using(parts, self.mapper.queries.device)

    # ---- what trains ----

    def is_trainable_name(self, name: str) -> bool:
        """The single rule for what trains: voken rows, mapper, input projection (unless
        ``vision.train_projection`` is off), LLM adapter."""
        if name.startswith(("mapper.mlp.", "mapper.queries")):
            return self.cfg.mapper.train_mlp_and_queries
        if name.startswith("input_projection."):
            return self.cfg.vision.train_projection
        if name.startswith(("vokens.", "mapper.")):
            return True
        return name.startswith("llm.") and name[len("llm."):] in self._adapter_names

    def mark_trainable(self) -> None:
        """Freeze everything but the trainable parts; log both counts."""
        for name, param in self.named_parameters():
            param.requires_grad_(self.is_trainable_name(name))
        for module in self.frozen_modules():
            module.eval()
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in self.parameters() if not p.requires_grad)
        log.info("MiniGPT5 parameters: %s trainable, %s frozen", f"{trainable:,}", f"{frozen:,}")

    def apply_activation_checkpointing(self) -> None:
        """Checkpoint the LLM's decoder layers and/or the UNet's blocks, as the config says."""
        if self.cfg.llm.gradient_checkpointing:
            checkpoint_layers(self.llm, layer_classes(self.llm))
        if self.cfg.diffusion.gradient_checkpointing:
            checkpoint_layers(self.unet, unet_block_classes(self.unet))

    def frozen_modules(self) -> list[nn.Module]:
        """Modules with no trainable parameter; kept in eval mode (no dropout)."""
        modules = [self.text_encoder, self.unet, self.latents]
        if self.vision is not None:
            modules.append(self.vision)
        if not self._adapter_names:
            modules.append(self.llm)
        return modules

    def train(self, mode: bool = True) -> "MiniGPT5":
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the trainable tensors, keyed as in ``state_dict()``."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k in names}

    # ---- the LLM side ----

    def read_images(self, input_pixels: torch.Tensor) -> torch.Tensor:
        """The vision tower's tokens (M, k, Dv) of input images (M, 3, S, S), mirrored as
        ``augment.hflip`` draws in training; gradients reach the tower only where it trains
        (``minigpt5 pretrain-vision``)."""
        self.require_vision("the batch has input images")
        # Context-image flips come from the global RNG, which training seeds per micro-batch.
        flips = self.training_flips(input_pixels.shape[0], None, input_pixels.device)
        tower_trains = any(p.requires_grad for p in self.vision.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and tower_trains), self.using(self.vision):
            return self.vision(flip_where(input_pixels, flips))

    def embed_inputs(
        self, input_ids: torch.Tensor, input_pixels: Optional[torch.Tensor] = None,
        image_tokens: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Token embeddings (B, T, D): voken rows joined in, and the projected tokens of each
        input image (M, 3, S, S) written over its run of ``<ImageHere>`` placeholders.
        ``image_tokens``: :meth:`read_images` of ``input_pixels``, for a caller that has them."""
        is_image = input_ids == self.image_token_id  # (B, T)
        embeds = self.vokens.embed(input_ids.masked_fill(is_image, 0), self.llm.get_input_embeddings())
        if not is_image.any():
            if self.input_projection is not None and torch.is_grad_enabled():
                embeds = embeds + zero_through(self.input_projection)
            return embeds
        if image_tokens is None:
            self.require_vision("the batch has image placeholders")
            if input_pixels is None:
                raise ValueError("the batch has image placeholders but no input_pixels")
            image_tokens = self.read_images(input_pixels)  # (M, k, Dv)
        features = self.input_projection(image_tokens.to(self.input_projection.weight.dtype))  # (M, k, D)
        if features.shape[0] * features.shape[1] != int(is_image.sum()):
            raise ValueError(
                f"{int(is_image.sum())} image placeholders for {features.shape[0]} input images "
                f"of {features.shape[1]} tokens each"
            )
        return embeds.masked_scatter(is_image.unsqueeze(-1), features.to(embeds.dtype))

    def llm_forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, input_pixels: Optional[torch.Tensor] = None,
        image_tokens: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits over the vocabulary plus vokens (B, T, V + n) and last hidden states (B, T, D)
        (``image_tokens``: as :meth:`embed_inputs` takes them)."""
        embeds = self.embed_inputs(input_ids, input_pixels, image_tokens)  # (B, T, D)
        # No KV cache: nothing reuses it, and a checkpointed layer would write it twice.
        step = self.llm_step(embeds, attention_mask)
        return step.logits, step.hidden

    def llm_step(
        self, embeds: torch.Tensor, attention_mask: Optional[torch.Tensor], cache: Any = None, *,
        use_cache: bool = False, logits_to_keep: int = 0,
    ) -> LLMStep:
        """One LLM call: embeddings of the new positions (B, k, D), the mask of every position so
        far (B, T) (None: no padding, every position attends, as Hugging Face's ``generate`` passes
        an all-ones mask), and ``cache``, the KV cache of the positions before the new ones (None:
        there are none) -> logits at the last ``logits_to_keep`` positions (0: all), the new
        positions' states, and with ``use_cache`` the cache that includes them.

        What the adapter changes is handled here: the cache argument's name, and prefix tuning,
        whose PEFT wrapper replaces any cache it is given with a fresh prefix; so a call with a
        cache goes to the base model directly, the prefix already in the cache and in the mask.
        """
        llm = self.llm
        kwargs: dict[str, Any] = dict(output_hidden_states=True, use_cache=use_cache)
        if logits_to_keep:
            kwargs["logits_to_keep"] = logits_to_keep
        if cache is not None:
            kwargs[cache_argument(llm)] = cache
            prefix = prefix_length(llm)
            if prefix:
                llm = base_model(llm)
            if prefix and attention_mask is not None:
                ones = torch.ones(attention_mask.shape[0], prefix, dtype=attention_mask.dtype,
                                  device=attention_mask.device)  # (B, P)
                attention_mask = torch.cat([ones, attention_mask], dim=1)  # (B, P + T)
        out = llm(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)
        hidden = out.hidden_states[-1]  # (B, k, D)
        logits = self.vokens.extend_logits(hidden[:, -out.logits.shape[1]:], out.logits)  # (B, K, V + n)
        if not use_cache:
            return LLMStep(logits, hidden)
        return LLMStep(logits, hidden, out.cache if hasattr(out, "cache") else out.past_key_values)

    def voken_features(self, input_ids: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states at the positions that predict each voken -> (N, n, D).

        For every ``[IMG0]`` at position p, positions p-1 .. p+n-2 predict [IMG0]..[IMG{n-1}].
        These are the states generation has when it emits the vokens. The official code reads
        the same positions in training (``minigpt4/models/mini_gpt5.py`` lines 278-283 shift the
        ``[IMG0]`` index by -1; ``model.py`` line 268 takes n states from there) and in
        generation (``model.py`` lines 317-321: the state before ``[IMG0]``, then those of
        ``[IMG0]``..``[IMG{n-2}]``).
        """
        n = self.cfg.vokens.num_vokens
        rows, starts = (input_ids == self.voken_ids[0]).nonzero(as_tuple=True)  # (N,), (N,)
        if (starts < 1).any() or (starts + n - 1 > input_ids.shape[1]).any():
            raise ValueError("a voken block is cut by the sequence boundary")
        offsets = torch.arange(n, device=input_ids.device) - 1  # (n,)
        positions = starts[:, None] + offsets  # (N, n)
        return hidden[rows[:, None], positions]  # (N, n, D)

    def condition(self, features: torch.Tensor) -> torch.Tensor:
        """Voken features (N, n, D) -> SD conditioning (N, Q, C)."""
        return self.mapper(features.to(self.mapper.queries.dtype))

    def null_condition(self, count: int) -> torch.Tensor:
        """The unconditional embedding: the mapper's output for all-zero voken features."""
        d = self.llm.config.hidden_size
        zeros = torch.zeros(count, self.cfg.vokens.num_vokens, d, device=self.mapper.queries.device)
        return self.condition(zeros)

    def training_flips(self, count: int, generator: Generators, device: torch.device) -> Optional[torch.Tensor]:
        """Which of ``count`` images to mirror (``augment.hflip``, in training only) -> (count,) bool,
        or None when nothing is flipped (then nothing is drawn from ``generator``)."""
        p = self.cfg.augment.hflip
        if not self.training or p == 0:
            return None
        return draw(torch.rand, (count,), generator, device=device) < p

    # ---- the diffusion side ----

    @property
    def condition_shape(self) -> tuple[int, int]:
        """One sample's conditioning (Q, C), or (Q + 1, C) with a pooled row (:mod:`minigpt5.sdxl`)."""
        rows = self.cfg.mapper.num_queries + (self.pooled_width is not None)
        return rows, self.condition_width

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The denoiser's prediction for noisy latents (N, c, h, w) under conditioning (N, Q, C)
        (SDXL's and SD3's packed: :mod:`minigpt5.sdxl`)."""
        noisy, cond = noisy.to(self.unet_dtype), cond.to(self.unet_dtype)
        return decoders.denoise(self.unet, noisy, timesteps, cond, self.cfg.diffusion.resolution)

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        """Target pixels (N, 3, H, W) in [-1, 1] -> scaled latents (N, c, h, w)."""
        return self.latents.encode(pixels, generator).float()

    @torch.no_grad()
    def target_latents(
        self, batch: dict[str, torch.Tensor], generator: Generators = None, flips: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """The batch's targets as scaled latents (N, c, h, w), from cached moments where given.

        Cached targets skip the VAE encoder; the rest are encoded now. All N moments are
        then sampled in one draw, so the latents (and the loss) are the same whether a
        target's moments came from the cache or from the encoder.

        ``flips`` (N,) mirrors those targets: pixels before encoding (as the official code
        flips images), cached moments after it. The VAE is convolutional, so a mirrored
        latent is close to, but not bit-equal to, the latent of the mirrored image; with
        flips, cached and encoded targets therefore give slightly different losses.
        """
        moments = batch.get("target_latent_moments")
        if moments is None:
            return self.encode_images(flip_where(batch["target_pixels"], flips), generator)
        if not isinstance(self.latents, VAELatents):
            raise ValueError("the batch has cached target_latent_moments but diffusion.latent_space is 'pixel'")
        size = self.cfg.diffusion.resolution // self.latents.downsample_factor
        expected = (2 * self.latents.channels, size, size)
        check_cached_shape("target_latent_moments", moments, expected, "image",
                           f"this model's VAE at diffusion.resolution {self.cfg.diffusion.resolution}")
        cached = batch.get("target_cached")
        if cached is None:
            moments = flip_where(moments.float(), flips)
        else:
            pixels = batch["target_pixels"]
            if int(cached.sum()) != moments.shape[0] or int((~cached).sum()) != pixels.shape[0]:
                raise ValueError(
                    f"target_cached marks {int(cached.sum())} of {cached.shape[0]} targets, but the batch has "
                    f"{moments.shape[0]} cached moments and {pixels.shape[0]} target images"
                )
            merged = moments.new_empty((cached.shape[0], *expected))  # (N, 2c, h, w)
            merged[cached] = flip_where(moments.float(), None if flips is None else flips[cached])
            if pixels.shape[0]:
                merged[~cached] = self.latents.moments(flip_where(pixels, None if flips is None else flips[~cached]))
            moments = merged
        return self.latents.sample(moments, generator).float()

    @torch.no_grad()
    def encode_captions(self, caption_ids: torch.Tensor) -> torch.Tensor:
        """SD text-encoder output (N, L, C) for caption ids (N, L)."""
        with self.using(self.text_encoder):
            return self.text_encoder(caption_ids)[0].float()

    @torch.no_grad()
    def caption_targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The CAP targets (N, L, C) (SDXL's and SD3's packed: (N, L + 1, C)): the text encoder's output on
        ``caption_ids``, taken from ``caption_embeddings`` where the batch has them cached; the rest
        are encoded now."""
        ids = batch["caption_ids"]
        embeddings = batch.get("caption_embeddings")
        if embeddings is None:
            return self.encode_captions(ids)
        if isinstance(self.text_encoder, DualTextEncoder):
            expected = self.text_encoder.output_shape(ids.shape[1])
        else:
            expected = (ids.shape[1], self.text_encoder.config.hidden_size)
        check_cached_shape("caption_embeddings", embeddings, expected, "caption",
                           f"this model's text encoder on caption_ids of length {ids.shape[1]}")
        cached = batch.get("caption_cached")
        if cached is None:
            cached = torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device)
        if int(cached.sum()) != embeddings.shape[0] or cached.shape[0] != ids.shape[0]:
            raise ValueError(
                f"caption_cached marks {int(cached.sum())} of {cached.shape[0]} captions, but the batch has "
                f"{embeddings.shape[0]} cached caption_embeddings and {ids.shape[0]} caption_ids"
            )
        targets = embeddings.new_empty((ids.shape[0], *expected), dtype=torch.float32)  # (N, L, C)
        targets[cached] = embeddings.float()
        if not cached.all():
            targets[~cached] = self.encode_captions(ids[~cached])
        return targets

    def null_caption(self, length: int, device: torch.device) -> torch.Tensor:
        """SD's own null conditioning, the embedding of the empty caption -> (1, L, C)."""
        cached = self._null_caption
        if cached is None or cached.shape[1] != length or cached.device != device:
            ids = tokenize_for_text_encoder(self.sd_tokenizer, [""], length).to(device)
            self._null_caption = cached = self.encode_captions(ids)
        return cached

    # ---- training ----

    def diffusion_loss(self, latents: torch.Tensor, cond: torch.Tensor, generator: Generators) -> torch.Tensor:
        """The LDM loss of latents (N, c, h, w) under conditioning (N, Q, C); flow matching for SD3's decoders."""
        return decoders.diffusion_loss(self.denoise, self.scheduler, latents, cond, self.cfg.loss, generator)

    def forward(self, batch: dict[str, torch.Tensor], generator: Generators = None) -> MiniGPT5Output:
        """Named losses of ``batch``. ``generator``: one for the batch's random draws (noise,
        timesteps, guidance dropout, VAE sampling), or one per target image."""
        logits, hidden = self.llm_forward(batch["input_ids"], batch["attention_mask"], batch.get("input_pixels"))
        loss_text = text_loss(logits, batch["labels"])
        features = self.voken_features(batch["input_ids"], hidden)  # (N, n, D)
        targets = target_count(batch)
        if features.shape[0] != targets:
            raise ValueError(f"batch has {features.shape[0]} voken blocks but {targets} target images")
        if features.shape[0] == 0:
            # No target image (e.g. text-only dialogue responses): no diffusion or CAP loss.
            return MiniGPT5Output(text=loss_text, ldm=zero_through(self.mapper), cap=None)
        features, dropped = drop_features(features, self.cfg.guidance.cfg_dropout if self.training else 0.0, generator)
        cond = self.condition(features)  # (N, Q, C)
        flips = self.training_flips(features.shape[0], generator, features.device)  # augment.hflip
        latents = self.target_latents(batch, generator, flips)  # (N, c, h, w)
        loss_ldm = self.diffusion_loss(latents, cond, generator)
        loss_cap = None
        if self.cfg.loss.cap_weight > 0 and "caption_ids" in batch:
            caption_ids = batch["caption_ids"]
            target = self.caption_targets(batch)  # (N, L, C)
            # Dropped samples are aligned with the empty caption: SD's own null conditioning.
            target = torch.where(dropped[:, None, None], self.null_caption(caption_ids.shape[1], caption_ids.device), target)
            loss_cap = cap_loss(cond, target)
        return MiniGPT5Output(text=loss_text, ldm=loss_ldm, cap=loss_cap)

    # ---- sampling ----

    def caption_batch(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """Token batch of captions each followed by the vokens and end marker, as the template words them."""
        examples = [
            self.template.encode(
                Conversation("caption", Turn("", 1), caption=prepare_caption(c, self.cfg.template)),
                self.cfg.llm.max_length,
            )
            for c in captions
        ]
        return pad_examples(examples, self.tokenizer.pad_token_id)

    @torch.no_grad()
    def images_from_features(
        self,
        features: torch.Tensor,
        *,
        scale: Optional[float] = None,
        num_inference_steps: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        sampler: Optional[str] = None,
    ) -> torch.Tensor:
        """Guided sampling from voken features (N, n, D) -> images (N, 3, H, W) in [-1, 1]."""
        cond = self.condition(features)
        return self.images_from_condition(
            cond, self.null_condition(cond.shape[0]), scale=scale, num_inference_steps=num_inference_steps,
            generator=generator, sampler=sampler,
        )

    @torch.no_grad()
    def images_from_condition(
        self,
        cond: torch.Tensor,
        uncond: torch.Tensor,
        *,
        scale: Optional[float] = None,
        num_inference_steps: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        sampler: Optional[str] = None,
    ) -> torch.Tensor:
        """Guided sampling of the frozen UNet from conditioning (N, Q, C) -> images (N, 3, H, W) in [-1, 1].

        ``uncond`` (N or 1, Q, C) is the unconditional embedding; ``scale`` 1 means no guidance.
        ``scale``, ``num_inference_steps`` and ``sampler`` (a :data:`minigpt5.guidance.SAMPLERS`
        name) default to ``cfg.guidance``'s.
        """
        g = self.cfg.guidance
        size = self.cfg.diffusion.resolution // self.latents.downsample_factor
        shape = (cond.shape[0], self.unet.config.in_channels, size, size)
        scheduler = build_sampler(sampler or g.sampler, self.scheduler.config, flow=self.flow_matching)
        with self.using(self.unet, self.latents):
            latents = sample_latents(
                self.denoise, scheduler, shape, cond.to(self.unet_dtype), uncond.expand_as(cond).to(self.unet_dtype),
                scale=g.scale if scale is None else scale,
                num_inference_steps=num_inference_steps or g.num_inference_steps,
                generator=generator,
            )
            return self.latents.decode(latents).float().clamp(-1, 1)

    @torch.no_grad()
    def generate_images(
        self,
        captions: list[str],
        *,
        scale: Optional[float] = None,
        num_inference_steps: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        sampler: Optional[str] = None,
    ) -> torch.Tensor:
        """Caption -> vokens -> mapper -> guided diffusion: images (N, 3, H, W) in [-1, 1]."""
        return self.images_for_batch(
            self.caption_batch(captions), scale=scale, num_inference_steps=num_inference_steps, generator=generator,
            sampler=sampler,
        )

    @torch.no_grad()
    def images_for_batch(
        self,
        batch: dict[str, Any],
        *,
        scale: Optional[float] = None,
        num_inference_steps: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        sampler: Optional[str] = None,
    ) -> torch.Tensor:
        """Teacher-forced: the images a training batch's voken blocks draw -> (N, 3, H, W) in [-1, 1].

        Reads ``input_ids``, ``attention_mask`` and optional ``input_pixels`` as :meth:`forward` does.
        """
        device = self.mapper.queries.device
        pixels = batch.get("input_pixels")
        input_ids = batch["input_ids"].to(device)
        _, hidden = self.llm_forward(
            input_ids, batch["attention_mask"].to(device), None if pixels is None else pixels.to(device)
        )
        features = self.voken_features(input_ids, hidden)
        return self.images_from_features(
            features, scale=scale, num_inference_steps=num_inference_steps, generator=generator, sampler=sampler
        )
