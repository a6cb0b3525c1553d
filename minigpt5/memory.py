"""Activation memory of one training step, measured on the meta device.

The LLM, mapper and UNet of a model built with :meth:`MiniGPT5.on_meta` run one training
forward on meta tensors of the step's shapes, and every tensor autograd saves for the
backward is counted once (parameters excluded): the activations a GPU holds at the end
of the forward. Nothing is allocated, so the paper-size model is measured in a second.

With activation checkpointing a layer saves only its inputs, and recomputes its own
activations during its backward; the peak then adds the largest single layer's
activations, which is measured per layer in the same way.

Attention is counted as a GPU's memory-efficient kernel runs it (queries, keys, values,
output and log-sum-exp saved; no T x T matrix): on meta tensors PyTorch would take the
math path, which a GPU run with flash or memory-efficient attention does not.

What it does not see: autocast (a bf16-mixed step keeps the fp32 mapper's activations in
bf16; counted here in fp32), temporary buffers inside kernels, and the allocator's slack.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from minigpt5.layers import layer_classes, unet_block_classes
from minigpt5.model import MiniGPT5


def _efficient_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """``scaled_dot_product_attention`` through the memory-efficient kernel (shapes only:
    the mask's values do not matter on meta tensors, so it is left out)."""
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        repeats = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(repeats, -3), value.repeat_interleave(repeats, -3)
    out = torch.ops.aten._scaled_dot_product_efficient_attention(query, key, value, None, True, dropout_p, False, scale=scale)
    return out[0]


@contextmanager
def efficient_attention() -> Iterator[None]:
    """Route ``F.scaled_dot_product_attention`` through the memory-efficient kernel."""
    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _efficient_attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def storage_bytes_saved(model: nn.Module, step: Callable[[], object]) -> int:
    """Bytes autograd saves for backward while ``step`` runs on real tensors: each storage
    once, ``model``'s parameters left out (the reference :class:`SavedTensors` is checked against)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(storages.values())


class SavedTensors:
    """Counts the bytes autograd saves for backward, each tensor once, parameters left out."""

    def __init__(self, model: nn.Module) -> None:
        self.params = {id(p) for p in model.parameters()}
        self.seen: dict[int, torch.Tensor] = {}  # keeps them alive so ids stay unique
        self.bytes = 0

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        base = tensor if tensor._base is None else tensor._base
        if id(base) not in self.params and id(base) not in self.seen:
            self.seen[id(base)] = base
            self.bytes += base.numel() * base.element_size()
        return tensor

    def run(self, step: Callable[[], object]) -> int:
        """Bytes newly saved while ``step`` runs."""
        before = self.bytes
        with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t), efficient_attention():
            step()
        return self.bytes - before


def largest_unit(counter: SavedTensors, root: nn.Module, classes: set[type[nn.Module]], step: Callable[[], object]) -> int:
    """Run ``step``; return the most bytes any one module of ``classes`` saved."""
    sizes: list[int] = []
    starts: dict[int, int] = {}

    def before(module: nn.Module, *_: object) -> None:
        starts[id(module)] = counter.bytes

    def after(module: nn.Module, *_: object) -> None:
        sizes.append(counter.bytes - starts.pop(id(module)))

    units = [m for m in root.modules() if isinstance(m, tuple(classes))]
    handles = [h for m in units for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    try:
        counter.run(step)
    finally:
        for handle in handles:
            handle.remove()
    return max(sizes, default=0)


@dataclass
class Activations:
    """Bytes saved for the backward by each part, and the most that one LLM decoder layer
    or UNet block saved (what checkpointing recomputes for that layer during its backward)."""

    llm: int
    mapper: int
    unet: int
    largest_layer: int

    @property
    def total(self) -> int:
        return self.llm + self.mapper + self.unet


class StepShapes:
    """Meta inputs of one training step: ``batch`` sequences of ``seq_len`` tokens, one target each."""

    def __init__(self, model: MiniGPT5, batch: int, seq_len: int) -> None:
        cfg, llm_dtype = model.cfg, model.llm.get_input_embeddings().weight.dtype
        hidden = model.llm.config.hidden_size
        meta = dict(device="meta")
        self.embeds = torch.empty(batch, seq_len, hidden, dtype=llm_dtype, requires_grad=True, **meta)  # (B, T, D)
        # A 4-D mask: the 2-D path inspects the mask's values, which meta tensors do not have.
        self.mask = torch.empty(batch, 1, seq_len, seq_len, dtype=torch.bool, **meta)  # (B, 1, T, T)
        self.labels = torch.empty(batch * (seq_len - 1), dtype=torch.long, **meta)
        self.features = torch.empty(batch, cfg.vokens.num_vokens, hidden, requires_grad=True, **meta)  # (N, n, D)
        size = cfg.diffusion.resolution // model.latents.downsample_factor
        unet = model.unet.config
        self.latents = torch.empty(batch, unet.in_channels, size, size, dtype=model.unet_dtype, **meta)  # (N, c, h, w)
        self.timesteps = torch.empty(batch, dtype=torch.long, **meta)
        self.cond = torch.empty(batch, *model.condition_shape, dtype=model.unet_dtype,
                                requires_grad=True, **meta)  # (N, Q, C) (SDXL: Q + 1 rows)


def measure_activations(model: MiniGPT5, batch: int, seq_len: int) -> Activations:
    """Activation bytes of one training step of ``model`` (built on the meta device), as it
    is configured: with its layers checkpointed or not."""
    x = StepShapes(model, batch, seq_len)
    counter = SavedTensors(model)

    def llm() -> None:  # as llm_forward and text_loss run it
        logits = model.llm_step(x.embeds, x.mask).logits  # (B, T, V + n)
        F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), x.labels)

    def unet() -> None:  # as ldm_loss runs it: UNet, then MSE in float32
        pred = model.denoise(x.latents, x.timesteps, x.cond)
        F.mse_loss(pred.float(), x.latents.float())

    llm_layer = largest_unit(counter, model.llm, layer_classes(model.llm), llm)
    llm_bytes = counter.bytes
    mapper_bytes = counter.run(lambda: model.condition(x.features))
    unet_block = largest_unit(counter, model.unet, unet_block_classes(model.unet), unet)
    return Activations(
        llm=llm_bytes,
        mapper=mapper_bytes,
        unet=counter.bytes - llm_bytes - mapper_bytes,
        largest_layer=max(llm_layer, unet_block),
    )
