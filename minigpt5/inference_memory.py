"""Peak memory of generation, measured on the meta device (``minigpt5 plan --inference``).

Weights are counted from the model built with :meth:`MiniGPT5.on_meta`, in each choice's dtype;
a quantized LLM's linear layers (lm_head and embeddings stay in 16 bits) at bitsandbytes'
sizes: LLM.int8 one byte a weight plus an fp32 scale a row, NF4 with double quantization
half a byte plus one byte per block of 64 and an fp32 per 256 blocks.

Activations are measured by running the parts on meta tensors and following every tensor
the run creates until it is freed (:class:`LiveBytes`): the most alive at once is the
part's peak. Generation's phases, batch 1:

- the prompt: one LLM call over ``llm.max_length`` tokens with the KV cache (the most the
  context holds); its peak includes the cache, which stays;
- an image, with that cache alive: the UNet under classifier-free guidance (batch 2), then
  the VAE decoder, then the vision tower reading the image back (stage 2; its ViT, the
  Q-Former's 32 queries left out).

With offloading only the LLM and the trained parts stay on the GPU; the UNet and VAE join
them while an image is drawn, the tower while it reads. Not counted: the CUDA context
(~0.5-1 GiB), kernels' workspaces, the allocator's slack; a view that outlives its base
is counted until the base's tensor object is freed.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from minigpt5.config import MiniGPT5Config
from minigpt5.memory import efficient_attention
from minigpt5.model import MiniGPT5

# bytes per weight of a quantized linear layer, and per output row (its scales)
QUANTIZED_BYTES = {"8bit": (1.0, 4.0), "4bit": (0.5 + 1 / 64 + 4 / (64 * 256), 0.0)}


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensors created inside, while they are alive; :attr:`peak` the most at once."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if any(ret.alias_info is not None for ret in func._schema.returns):
            return out  # a view or an in-place result: no new memory
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                nbytes = tensor.untyped_storage().nbytes()
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                weakref.finalize(tensor, self._free, nbytes)
        return out


def peak_of(step: Callable[[], Any]) -> tuple[int, int]:
    """(peak bytes while ``step`` runs, bytes still alive in what it returns)."""
    with torch.no_grad(), efficient_attention(), LiveBytes() as counter:
        kept = step()
    return counter.peak, counter.live if kept is not None else 0


@dataclass
class PartSizes:
    """Weight bytes of each part at one dtype; the LLM's linear layers apart (what quantization shrinks)."""

    llm_linear: int  # parameters of the decoder's linear layers (numel)
    llm_linear_rows: int  # their output rows (quantization scales)
    llm_other: int  # bytes: embeddings, lm_head, norms
    text_encoder: int
    unet: int
    vae: int
    vision: int
    trained: int  # voken rows, mapper, projection (their own dtype)
    llm_bytes_per_weight: int


def part_bytes(module: Optional[nn.Module]) -> int:
    return 0 if module is None else sum(p.numel() * p.element_size() for p in module.parameters())


def part_sizes(model: MiniGPT5) -> PartSizes:
    head = model.llm.get_output_embeddings()
    linears = [m for m in model.llm.modules() if isinstance(m, nn.Linear) and m is not head]
    linear_numel = sum(m.weight.numel() for m in linears)
    width = model.llm.get_input_embeddings().weight.element_size()
    return PartSizes(
        llm_linear=linear_numel, llm_linear_rows=sum(m.out_features for m in linears),
        llm_other=part_bytes(model.llm) - linear_numel * width,
        text_encoder=part_bytes(model.text_encoder), unet=part_bytes(model.unet), vae=part_bytes(model.latents),
        vision=part_bytes(model.vision),
        trained=part_bytes(model.vokens) + part_bytes(model.mapper) + part_bytes(model.input_projection),
        llm_bytes_per_weight=width,
    )


@dataclass
class PhasePeaks:
    """Activation bytes of generation's phases (batch 1)."""

    prompt: int  # the LLM over the longest context, its KV cache included
    cache: int  # that KV cache, alive while images are drawn
    unet: int  # one guided UNet call (batch 2)
    vae: int  # decoding one image
    vision: int  # the tower reading one image (0 without one)


def phase_peaks(model: MiniGPT5) -> PhasePeaks:
    """Measure each phase of generation on ``model`` (built on the meta device)."""
    cfg = model.cfg
    meta = dict(device="meta")
    llm_dtype = model.llm.get_input_embeddings().weight.dtype
    embeds = torch.empty(1, cfg.llm.max_length, model.llm.config.hidden_size, dtype=llm_dtype, **meta)  # (1, T, D)
    prompt, cache = peak_of(lambda: model.llm_step(embeds, None, use_cache=True, logits_to_keep=1).cache)
    size = cfg.diffusion.resolution // model.latents.downsample_factor
    latents = torch.empty(2, model.unet.config.in_channels, size, size, dtype=model.unet_dtype, **meta)  # (2, c, h, w)
    cond = torch.empty(2, *model.condition_shape, dtype=model.unet_dtype, **meta)  # (2, Q, C) (SDXL: Q + 1 rows)
    timestep = torch.zeros((), dtype=torch.long, **meta)
    unet, _ = peak_of(lambda: model.denoise(latents, timestep, cond))
    vae, _ = peak_of(lambda: model.latents.decode(latents[:1]))
    vision = 0
    if model.vision is not None:
        pixels = torch.empty(1, 3, model.vision.image_size, model.vision.image_size, **meta)
        # the ViT alone: the Q-Former (32 queries) checks its mask's values, which meta tensors lack
        vision, _ = peak_of(lambda: model.vision.encoder(pixel_values=pixels.to(model.vision.dtype)))
    return PhasePeaks(prompt, cache, unet, vae, vision)


@dataclass(frozen=True)
class Choice:
    """One way of loading for generation."""

    dtype: str  # the frozen parts'
    quantize: Optional[str]  # the LLM's linear layers
    offload: bool

    @property
    def label(self) -> str:
        llm = {None: "", "8bit": " + 8-bit LLM", "4bit": " + 4-bit LLM"}[self.quantize]
        return f"{self.dtype}{llm}{', offload' if self.offload else ''}"


CHOICES = tuple(Choice(dtype, quantize, offload) for dtype, quantize in
                (("float32", None), ("bfloat16", None), ("bfloat16", "8bit"), ("bfloat16", "4bit"))
                for offload in (False, True))


@dataclass
class InferencePeak:
    """Bytes on the GPU for one choice."""

    choice: Choice
    llm: float
    resident_parts: float  # SD parts and tower while idle (0 when offloaded)
    trained: float
    prompt_peak: float  # resident weights + the prompt's activations
    image_peak: float  # resident weights + cache + the largest image phase (with its part when offloaded)

    @property
    def peak(self) -> float:
        return max(self.prompt_peak, self.image_peak)


def inference_peak(choice: Choice, sizes: PartSizes, phases: PhasePeaks) -> InferencePeak:
    """The peak of generation under ``choice``, from the parts' sizes and phases measured at bf16
    (fp32 doubles the frozen parts' bytes and activations)."""
    scale = 2.0 if choice.dtype == "float32" else 1.0  # sizes and phases are measured at 16 bits
    if choice.quantize:
        per_weight, per_row = QUANTIZED_BYTES[choice.quantize]
        llm = sizes.llm_other * scale + sizes.llm_linear * per_weight + sizes.llm_linear_rows * per_row
    else:
        llm = (sizes.llm_other + sizes.llm_linear * sizes.llm_bytes_per_weight) * scale
    parts = (sizes.text_encoder + sizes.unet + sizes.vae + sizes.vision) * scale
    base = llm + sizes.trained + (0 if choice.offload else parts)
    # UNet and VAE move to the GPU together for one image (minigpt5.offload); the tower on its own to read it
    drawing = max(phases.unet, phases.vae) * scale + ((sizes.unet + sizes.vae) * scale if choice.offload else 0)
    reading = phases.vision * scale + (sizes.vision * scale if choice.offload else 0)
    image_peak = base + phases.cache * scale + max(drawing, reading)
    return InferencePeak(choice, llm, 0 if choice.offload else parts, sizes.trained,
                         base + phases.prompt * scale, image_peak)


def inference_plan(cfg: MiniGPT5Config) -> tuple[PartSizes, PhasePeaks, list[InferencePeak]]:
    """Sizes and phases of ``cfg``'s model with its frozen parts in bf16, and the peak of every :data:`CHOICES`."""
    half = replace(cfg, llm=replace(cfg.llm, torch_dtype="bfloat16", gradient_checkpointing=False),
                   diffusion=replace(cfg.diffusion, torch_dtype="bfloat16", gradient_checkpointing=False),
                   vision=replace(cfg.vision, torch_dtype="bfloat16"))
    model = MiniGPT5.on_meta(half).eval()
    sizes, phases = part_sizes(model), phase_peaks(model)
    return sizes, phases, [inference_peak(choice, sizes, phases) for choice in CHOICES]
