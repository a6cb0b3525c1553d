"""``minigpt5 plan``: memory per GPU of a run under each strategy, before renting the GPUs.

    minigpt5 plan -c configs/uas.yaml -c configs/model/paper.yaml --trainer.devices=8 --data.batch_size=2
    minigpt5 plan --inference -c configs/uas.yaml -c configs/mls.yaml -c configs/model/paper.yaml

``--inference`` prints the GPU memory of generation instead, for each loading choice (bf16,
8-bit or 4-bit LLM, offloading): :mod:`lit_models.inference_plan`.

Takes the same ``-c`` files and flags as ``fit``, builds the model on the meta device
(no weights, no download: the paper's models come from their shipped architecture
configs) and prints, for DDP, DeepSpeed ZeRO-2 and ZeRO-3 and FSDP, the bytes each GPU
holds. N is the world size (devices x nodes); P_t and P_f the trainable and frozen
parameter counts; "mixed" is a 16-bit mixed ``trainer.precision``.

- DDP: everything replicated. Weights at the model's dtypes (trainable in fp32), fp32
  gradients (in DDP's buckets, ``gradient_as_bucket_view``), AdamW m and v: 8 P_t.
- ZeRO-2: DeepSpeed casts the model to bf16 when mixed (weights 2 bytes each, replicated);
  each GPU keeps its 1/N of the gradients (bf16) and of the optimizer state: fp32 master
  copy + m + v = 12 P_t / N.
- ZeRO-3: as ZeRO-2 with the weights sharded too, frozen ones included (/N), plus the
  parameters gathered for the modules being run, approximated by two of the FSDP policy's
  units (DeepSpeed gathers per module and prefetches up to ``stage3_prefetch_bucket_size``).
- FSDP: ``fsdp.yaml`` keeps every part in fp32 (one dtype per unit), sharded: 4 (P_f +
  P_t) / N, fp32 gradients 4 P_t / N, m and v 8 P_t / N; gathered: the root unit for the
  whole step plus two units (prefetch) in the compute dtype (bf16 when mixed).
- Activations (same for all, per GPU): measured on the meta device for one step of
  ``data.batch_size`` sequences of ``llm.max_length`` tokens, each with one target image
  (``minigpt5/memory.py``): every tensor autograd saves, once. With activation
  checkpointing, the layers' inputs plus the largest layer's own activations, live again
  while it recomputes.

Not counted: communication buffers (DDP buckets beyond the gradients, DeepSpeed's
bucket sizes), the CUDA context (~0.5-1 GiB), kernels' workspaces and the allocator's
fragmentation. Keep 10-20% of the GPU free beyond the total.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import Any, Optional

import torch

from lit_models.inference_plan import format_inference_plan
from lit_models.lightning_cli import dataclass_from, fit_config
from lit_models.strategies import sharding_unit_classes, unit_parameters
from minigpt5.config import ConfigError, MiniGPT5Config
from minigpt5.layers import checkpoint_layers, layer_classes, unet_block_classes
from minigpt5.memory import Activations, measure_activations
from minigpt5.model import MiniGPT5

STRATEGIES = ("ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp")
GiB = 2**30


@dataclass
class ModelSizes:
    """Parameter counts and bytes of a model, as built (dtypes included)."""

    total: int
    trainable: int
    frozen_bytes: int
    trainable_bytes: int
    root_unit: int  # parameters outside every FSDP unit
    largest_unit: int  # parameters of the largest FSDP unit

    @property
    def frozen(self) -> int:
        return self.total - self.trainable


def model_sizes(model: MiniGPT5) -> ModelSizes:
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    frozen = [p for p in params if not p.requires_grad]
    owned = {unit: sum(p.numel() for p in ps) for unit, ps in unit_parameters(model, sharding_unit_classes(model)).items()}
    return ModelSizes(
        total=sum(p.numel() for p in params),
        trainable=sum(p.numel() for p in trainable),
        frozen_bytes=sum(p.numel() * p.element_size() for p in frozen),
        trainable_bytes=sum(p.numel() * p.element_size() for p in trainable),
        root_unit=owned.pop(model),
        largest_unit=max(owned.values(), default=0),
    )


@dataclass
class Footprint:
    """Bytes per GPU."""

    frozen_weights: float
    trainable_weights: float
    gradients: float
    optimizer: float
    gathered: float  # parameters gathered from other GPUs while their module runs

    @property
    def states(self) -> float:
        return self.frozen_weights + self.trainable_weights + self.gradients + self.optimizer + self.gathered


def footprint(strategy: str, sizes: ModelSizes, world: int, mixed: bool) -> Footprint:
    """Model-state bytes per GPU under ``strategy`` (the formulas of the module docstring)."""
    s, n = sizes, world
    compute = 2 if mixed else 4  # bytes of a parameter as the forward sees it
    if strategy == "ddp":
        return Footprint(s.frozen_bytes, s.trainable_bytes, s.trainable_bytes, 2 * s.trainable_bytes, 0)
    if strategy in ("deepspeed_zero2", "deepspeed_zero3"):
        frozen = 2 * s.frozen if mixed else s.frozen_bytes
        weights = 2 * s.trainable if mixed else s.trainable_bytes
        master = 4 * s.trainable if mixed else 0
        optimizer = (master + 8 * s.trainable) / n
        if strategy == "deepspeed_zero2":
            return Footprint(frozen, weights, weights / n, optimizer, 0)
        return Footprint(frozen / n, weights / n, weights / n, optimizer, 2 * s.largest_unit * compute)
    if strategy == "fsdp":
        gathered = (s.root_unit + 2 * s.largest_unit) * compute
        return Footprint(4 * s.frozen / n, 4 * s.trainable / n, 4 * s.trainable / n, 8 * s.trainable / n, gathered)
    raise ValueError(f"unknown strategy {strategy!r}; one of {', '.join(STRATEGIES)}")


# ---- reading the fit configuration without building anything ----

@dataclass
class RunSettings:
    """What the plan needs from a fit configuration."""

    model: MiniGPT5Config
    devices: int
    num_nodes: int
    batch_size: int
    precision: str
    accumulate: int

    @property
    def world(self) -> int:
        return self.devices * self.num_nodes

    @property
    def mixed(self) -> bool:
        return "16" in self.precision and "true" not in self.precision


def device_count(devices: Any) -> int:
    """GPUs per node of ``trainer.devices``; "auto" and -1 mean the GPUs visible here (at least 1)."""
    if isinstance(devices, (list, tuple)) and devices:
        return len(devices)
    if devices in ("auto", -1, "-1"):
        return max(1, torch.cuda.device_count())
    if isinstance(devices, int) or (isinstance(devices, str) and devices.isdigit()):
        if int(devices) > 0:
            return int(devices)
    raise ConfigError(f"trainer.devices must be a positive count, a list of GPU ids or auto; got {devices!r}")


def read_settings(args: list[str]) -> RunSettings:
    """Parse ``args`` (``-c`` files and flags, as for ``fit``) into the plan's settings."""
    config = fit_config(args)
    data = config.data.init_args if hasattr(config.data, "init_args") else config.data
    return RunSettings(
        model=dataclass_from(MiniGPT5Config, config.model.config.as_dict()),
        devices=device_count(config.trainer.devices),
        num_nodes=int(config.trainer.num_nodes),
        batch_size=int(data.batch_size),
        precision=str(config.trainer.precision),
        accumulate=int(config.trainer.accumulate_grad_batches or 1),
    )


# ---- the plan ----

@dataclass
class Plan:
    settings: RunSettings
    sizes: ModelSizes
    activations_off: Activations
    activations_on: Activations  # with the LLM's layers and the UNet's blocks checkpointed

    @property
    def activation_peak_on(self) -> int:
        return self.activations_on.total + self.activations_off.largest_layer

    def footprints(self) -> dict[str, Footprint]:
        return {name: footprint(name, self.sizes, self.settings.world, self.settings.mixed) for name in STRATEGIES}


def make_plan(settings: RunSettings) -> Plan:
    cfg = settings.model
    plain = replace(cfg, llm=replace(cfg.llm, gradient_checkpointing=False),
                    diffusion=replace(cfg.diffusion, gradient_checkpointing=False))
    model = MiniGPT5.on_meta(plain)
    sizes = model_sizes(model)
    batch, seq = settings.batch_size, cfg.llm.max_length
    off = measure_activations(model, batch, seq)
    checkpoint_layers(model.llm, layer_classes(model.llm))
    checkpoint_layers(model.unet, unet_block_classes(model.unet))
    on = measure_activations(model, batch, seq)
    return Plan(settings, sizes, off, on)


def format_plan(plan: Plan) -> str:
    s, z = plan.settings, plan.sizes
    feet = plan.footprints()
    configured = "on" if s.model.llm.gradient_checkpointing or s.model.diffusion.gradient_checkpointing else "off"
    lines = [
        f"world size {s.world} ({s.devices} devices x {s.num_nodes} nodes), {s.batch_size} per GPU, "
        f"accumulate {s.accumulate}: effective batch {s.batch_size * s.world * s.accumulate}; "
        f"precision {s.precision}; {s.model.llm.max_length} tokens per sequence, "
        f"{s.model.diffusion.resolution}px targets",
        f"parameters {z.total:,} = trainable {z.trainable:,} + frozen {z.frozen:,}",
        f"activation checkpointing in the config: {configured} (both shown)",
        "",
    ]
    width = 16
    row = ("{:<34}" + ("{:>" + str(width) + "}") * len(STRATEGIES)).format
    gib = lambda value: f"{value / GiB:.2f}"  # noqa: E731
    lines.append(row("GiB per GPU", *STRATEGIES))
    lines.append(row("-" * 34, *["-" * (width - 2)] * len(STRATEGIES)))
    for label, attr in [("frozen weights", "frozen_weights"), ("trainable weights", "trainable_weights"),
                        ("gradients", "gradients"), ("optimizer state (AdamW)", "optimizer"),
                        ("gathered parameters", "gathered")]:
        lines.append(row(label, *[gib(getattr(feet[n], attr)) for n in STRATEGIES]))
    act_off, act_on = plan.activations_off.total, plan.activation_peak_on
    lines.append(row("activations, checkpointing off", *[gib(act_off)] * len(STRATEGIES)))
    lines.append(row("activations, checkpointing on", *[gib(act_on)] * len(STRATEGIES)))
    lines.append(row("total, checkpointing off", *[gib(feet[n].states + act_off) for n in STRATEGIES]))
    lines.append(row("total, checkpointing on", *[gib(feet[n].states + act_on) for n in STRATEGIES]))
    a = plan.activations_off
    lines += [
        "",
        f"activations (checkpointing off): LLM {gib(a.llm)}, mapper {gib(a.mapper)}, UNet {gib(a.unet)} GiB; "
        f"largest single layer {gib(a.largest_layer)} GiB",
        "not counted: communication buckets, CUDA context, workspaces, fragmentation (keep 10-20% free). "
        "Formulas: lit_models/plan.py.",
    ]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(args):  # the fit flags it takes: `minigpt5 fit -c ... --help`
        print(__doc__)
        return 0
    if "--inference" in args:
        args.remove("--inference")
        print(format_inference_plan(read_settings(args).model))
        return 0
    print(format_plan(make_plan(read_settings(args))))
    return 0
