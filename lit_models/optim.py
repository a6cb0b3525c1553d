"""Optimizer settings and the warmup + linear-decay schedule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import nn

from minigpt5.config import ConfigError


@dataclass
class OptimConfig:
    """AdamW over the trainable parameters only."""

    lr: float = 2e-5  # base rate for voken rows, adapter and projections
    mapper_lr_scale: float = 10.0  # the feature mapper learns at lr * this
    weight_decay: float = 0.01  # applied to trainable matrices only (p.dim() >= 2)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 1000
    decay: str = "linear"  # "linear" to zero at the last step, or "constant"

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if self.decay not in ("linear", "constant"):
            raise ConfigError(f"optim.decay must be 'linear' or 'constant', got {self.decay!r}")
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        self.betas = tuple(self.betas)


def param_groups(model: nn.Module, cfg: OptimConfig, fast_prefixes: tuple[str, ...]) -> list[dict]:
    """Trainable parameters split by (fast lr?, decay?); frozen ones never enter."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = (name.startswith(fast_prefixes), param.dim() >= 2)
        groups.setdefault(key, []).append(param)
    return [
        {
            "name": f"{'fast' if fast else 'base'}{'' if decay else '_no_decay'}",
            "params": params,
            "lr": cfg.lr * (cfg.mapper_lr_scale if fast else 1.0),
            "weight_decay": cfg.weight_decay if decay else 0.0,
        }
        for (fast, decay), params in sorted(groups.items())
    ]


def warmup_decay_lambda(warmup_steps: int, total_steps: int, decay: str):
    """LR multiplier: linear warmup to 1, then constant or linear decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if decay == "constant" or total_steps <= warmup_steps:
            return 1.0
        return max(0.0, (total_steps - step) / (total_steps - warmup_steps))

    return factor


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, fast_prefixes: tuple[str, ...], total_steps: int, fused: bool = True
):
    """AdamW and its per-step LambdaLR schedule.

    The fused kernel runs on CPU and CUDA and is ~3x faster than the per-tensor loop, but
    Lightning refuses gradient clipping with a fused optimizer under mixed precision, so
    callers that clip pass ``fused=False``.
    """
    groups = param_groups(model, cfg, fast_prefixes)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused, foreach=not fused)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_decay_lambda(cfg.warmup_steps, total_steps, cfg.decay)
    )
    return optimizer, schedule


def configure_adamw(module: LightningModule, cfg: OptimConfig, fast_prefixes: tuple[str, ...] = ()) -> dict[str, Any]:
    """What ``configure_optimizers`` returns: :func:`build_optimizer` over the run's stepping
    batches, the schedule stepped per optimizer step (unfused when the trainer clips gradients)."""
    trainer = module.trainer
    optimizer, schedule = build_optimizer(
        module, cfg, fast_prefixes, int(trainer.estimated_stepping_batches), fused=not trainer.gradient_clip_val
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
