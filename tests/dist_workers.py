"""Process bodies for the multi-process tests (test_sharded_checkpoints): run under
``torch.multiprocessing.spawn``, one CPU process per rank, gloo."""

from __future__ import annotations

import io
import os
import socket
from pathlib import Path
from typing import Callable

import torch

CAPTIONS = ["a red circle", "a blue square", "a green triangle", "a yellow circle"]


def make_optimizer(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """SGD with momentum: its update is linear in the gradient, so the reference comparison
    measures gradient agreement (Adam's first step, lr * g / (|g| + eps), turns rounding noise
    in near-zero gradients into full-size steps); momentum gives ZeRO a state to shard."""
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_rank_env(rank: int, world_size: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size), DS_ACCELERATOR="cpu")
    torch.set_num_threads(1)


def tiny_module():
    """The tiny MiniGPT5Module, identical on every rank (the mapper draws from the global RNG)."""
    from lit_models.module import MiniGPT5Module

    torch.manual_seed(0)
    return MiniGPT5Module()


def global_batch(model, step: int) -> dict[str, torch.Tensor]:
    """The step's batch of all four captions; targets from a generator seeded by the step."""
    from batches import make_caption_batch

    return make_caption_batch(model, CAPTIONS, generator=torch.Generator().manual_seed(step))


def rank_slice(batch: dict[str, torch.Tensor], rank: int, world_size: int) -> dict[str, torch.Tensor]:
    """This rank's equal share of a global batch (every tensor's first dimension is the sample)."""
    per = len(CAPTIONS) // world_size
    return {k: v[rank * per:(rank + 1) * per] for k, v in batch.items()}


def sample_losses(module, batch: dict[str, torch.Tensor], step: int, rank: int, world_size: int) -> torch.Tensor:
    """Mean loss of this rank's samples, each sample's noise drawn from its own generator
    (seed = step, global sample index), so any split of the global batch draws the same."""
    per = len(CAPTIONS) // world_size
    generators = [torch.Generator().manual_seed(1000 * step + rank * per + i) for i in range(per)]
    return module.model_step(batch, generator=generators)[0]


def run_steps(step_fn: Callable[[dict[str, torch.Tensor], int], None], module, rank: int, world_size: int,
              steps: int) -> None:
    """``steps`` optimizer steps, each on this rank's slice of the step's global batch."""
    module.train()
    for step in range(steps):
        batch = rank_slice(global_batch(module.model, step), rank, world_size)
        step_fn(batch, step)


def trainable_state(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def deepspeed_worker(rank: int, world_size: int, port: int, stage: int, steps: int, out: str) -> None:
    """ZeRO ``stage`` over the tiny module: ``steps`` steps, then a sharded checkpoint in ``out``."""
    set_rank_env(rank, world_size, port)
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    module = tiny_module()
    trainable = [p for p in module.parameters() if p.requires_grad]
    config = {"train_micro_batch_size_per_gpu": len(CAPTIONS) // world_size, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True,
              "gradient_clipping": 0.0}  # DeepSpeed clips at 1.0 unless told otherwise
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=make_optimizer(trainable),
                                           config=config)

    def step_fn(batch, step):
        engine.backward(sample_losses(module, batch, step, rank, world_size))
        engine.step()

    run_steps(step_fn, module, rank, world_size, steps)
    # As Lightning's DeepSpeedStrategy saves (tag "checkpoint"). Its default keeps the frozen
    # weights in the file; ZeRO 0 has no record of what trained, so it needs them left out.
    engine.save_checkpoint(out, tag="checkpoint", exclude_frozen_parameters=stage == 0)
    torch.save({"trainable": trainable_state(module),
                "optimizer_numel": sum(p.numel() for g in engine.optimizer.param_groups for p in g["params"])},
               Path(out) / f"live_rank{rank}.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def fsdp2_worker(rank: int, world_size: int, port: int, steps: int, out: str) -> None:
    """FSDP2 (``fully_shard``) over the tiny model: LLM decoder layers and the mapper as their own
    groups, the rest (voken rows, frozen SD parts) in the root; the full state dict after ``steps``."""
    set_rank_env(rank, world_size, port)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    module = tiny_module()
    model = module.model
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    for layer in model.llm.model.layers:
        fully_shard(layer)
    fully_shard(model.mapper)
    fully_shard(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(trainable)

    def step_fn(batch, step):
        optimizer.zero_grad()
        sample_losses(module, batch, step, rank, world_size).backward()
        optimizer.step()

    run_steps(step_fn, module, rank, world_size, steps)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    local = sum(p.to_local().numel() for p in trainable)  # this rank's shards of the trainable weights
    if rank == 0:
        requires_grad = {n for n, p in model.named_parameters() if p.requires_grad}
        torch.save({"trainable": {f"model.{k}": v for k, v in full.items() if k in requires_grad},
                    "frozen_before": frozen_before,
                    "frozen_after": {k: v for k, v in full.items() if k in frozen_before}},
                   Path(out) / "fsdp2.pt")
    torch.save({"local_trainable_numel": local, "all_sharded": all(hasattr(p, "to_local") for p in model.parameters())},
               Path(out) / f"fsdp2_rank{rank}.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def deepspeed_kill_worker(rank: int, world_size: int, port: int, out: str, kill: bool) -> None:
    """ZeRO 2 over the tiny module: 2 steps and a save (the "before" tag), one more step, then a
    second save that, when ``kill``, dies half-way through on every rank; without ``kill`` the
    checkpoint in ``out`` is loaded into a fresh engine and what it holds is written to ``out``."""
    set_rank_env(rank, world_size, port)
    import deepspeed

    from lit_models.deepspeed_checkpoints import save_in_new_tag

    deepspeed.init_distributed(dist_backend="gloo")
    module = tiny_module()
    trainable = [p for p in module.parameters() if p.requires_grad]
    config = {"train_micro_batch_size_per_gpu": len(CAPTIONS) // world_size, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": 2}, "zero_allow_untested_optimizer": True, "gradient_clipping": 0.0}
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=make_optimizer(trainable), config=config)
    barrier = torch.distributed.barrier
    if not kill:
        # Trainable weights only in the file (as Lightning saves them), so not strict, as Lightning loads them.
        _, client = engine.load_checkpoint(out, load_optimizer_states=True, load_module_strict=False)
        torch.save({"client": client, "trainable": trainable_state(module)}, Path(out) / f"loaded_rank{rank}.pt")
        barrier()
        torch.distributed.destroy_process_group()
        return

    def step_fn(batch, step):
        engine.backward(sample_losses(module, batch, step, rank, world_size))
        engine.step()

    run_steps(step_fn, module, rank, world_size, 2)
    save_in_new_tag(engine, out, "before", {"step": 2}, exclude_frozen_parameters=True, is_global_zero=rank == 0,
                    barrier=barrier)
    torch.save(trainable_state(module), Path(out) / f"saved_rank{rank}.pt")
    run_steps(step_fn, module, rank, world_size, 1)
    real_save = engine.checkpoint_engine.save

    def die_half_way(state_dict, path):  # the first file of the new tag is written in part, then the job dies
        buffer = io.BytesIO()
        torch.save(state_dict, buffer)
        with open(path, "wb") as f:
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        os._exit(17)

    engine.checkpoint_engine.save = die_half_way
    try:
        save_in_new_tag(engine, out, "after", {"step": 3}, exclude_frozen_parameters=True, is_global_zero=rank == 0,
                        barrier=barrier)
    finally:
        engine.checkpoint_engine.save = real_save
