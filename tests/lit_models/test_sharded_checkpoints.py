"""Sharded training on CPU with 2 gloo processes: DeepSpeed ZeRO 0/2 and torch FSDP2.

Lightning's DeepSpeed and FSDP strategies refuse to start without a GPU, so these run
the same engines directly: ``deepspeed.initialize`` (DS_ACCELERATOR=cpu) and
``torch.distributed.fsdp.fully_shard``, on the tiny MiniGPT5Module with only its
trainable parameters in the optimizer, against a single-process reference that sees
the same global batch and the same per-sample noise.
"""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

import dist_workers
from lit_models.cli import main
from lit_models.export import export_trainable, trainable_weights
from lit_models.module import MiniGPT5Module

STEPS = 2


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    """Trainable weights after STEPS single-process steps on the whole global batch."""
    module = dist_workers.tiny_module()
    trainable = [p for p in module.parameters() if p.requires_grad]
    optimizer = dist_workers.make_optimizer(trainable)

    def step_fn(batch, step):
        optimizer.zero_grad()
        dist_workers.sample_losses(module, batch, step, rank=0, world_size=1).backward()
        optimizer.step()

    dist_workers.run_steps(step_fn, module, rank=0, world_size=1, steps=STEPS)
    return dist_workers.trainable_state(module)


def assert_close_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5, msg=lambda m: f"{key}: {m}")


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 2])
def test_deepspeed_zero_checkpoint_exports_the_trained_weights(stage, reference, tmp_path):
    ckpt = tmp_path / "ds"
    mp.spawn(dist_workers.deepspeed_worker, args=(2, dist_workers.free_port(), stage, STEPS, str(ckpt)), nprocs=2)
    live = [torch.load(ckpt / f"live_rank{r}.pt", weights_only=False) for r in range(2)]
    trainable_keys = MiniGPT5Module().trainable_keys()
    assert set(live[0]["trainable"]) == trainable_keys

    # Data parallel: both ranks hold the same weights, equal to one process on the whole batch.
    assert_close_weights(live[1]["trainable"], live[0]["trainable"])
    assert_close_weights(live[0]["trainable"], reference)
    # Only trainable parameters reach the optimizer (ZeRO 2: each rank's flat partition).
    numel = sum(v.numel() for v in reference.values())
    if stage == 0:
        assert live[0]["optimizer_numel"] == numel
    else:
        shards = sorted((ckpt / "checkpoint").glob("*zero_pp_rank_*_optim_states.pt"))
        assert len(shards) == 2, "ZeRO 2 writes one optimizer shard per rank"
        assert sum(r["optimizer_numel"] for r in live) < 1.01 * numel  # partitions, not copies

    states = torch.load(ckpt / "checkpoint" / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    if stage == 2:
        assert len(states["module"]) > len(trainable_keys), "the ZeRO 2 file should hold frozen weights too"

    out = tmp_path / "trainable.safetensors"
    exported = export_trainable(ckpt, out)
    assert_close_weights(exported, live[0]["trainable"])
    # The exported file starts a new run: init_from loads it into the module.
    module = MiniGPT5Module(init_from=str(out))
    assert_close_weights({k: v for k, v in module.state_dict().items() if k in trainable_keys}, exported)


def test_export_of_a_lightning_checkpoint_keeps_its_trainable_weights(tmp_path):
    module = dist_workers.tiny_module()
    state = {k: v + 1 for k, v in module.state_dict().items() if k in module.trainable_keys()}
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "global_step": 3}, ckpt)
    assert main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "w.safetensors")]) == 0
    exported = trainable_weights(tmp_path / "w.safetensors")
    assert exported.keys() == state.keys()
    assert all(torch.equal(exported[k], state[k]) for k in state)


def test_a_deepspeed_checkpoint_without_state_dict_passes_the_key_check():
    # DeepSpeed restores the weights itself; Lightning hands the module its client state only.
    MiniGPT5Module().on_load_checkpoint({"global_step": 3})
    with pytest.raises(KeyError, match="missing"):
        MiniGPT5Module().on_load_checkpoint({"state_dict": {}})


def test_export_names_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.ckpt"):
        export_trainable(tmp_path / "nowhere.ckpt", tmp_path / "w.safetensors")
    (tmp_path / "folder").mkdir()
    with pytest.raises(FileNotFoundError, match="without a 'latest' file"):
        export_trainable(tmp_path / "folder", tmp_path / "w.safetensors")


@pytest.mark.slow
def test_fsdp2_full_trainable_state_dict_matches_one_process(reference, tmp_path):
    mp.spawn(dist_workers.fsdp2_worker, args=(2, dist_workers.free_port(), STEPS, str(tmp_path)), nprocs=2)
    result = torch.load(tmp_path / "fsdp2.pt", weights_only=False)
    ranks = [torch.load(tmp_path / f"fsdp2_rank{r}.pt", weights_only=False) for r in range(2)]
    assert all(r["all_sharded"] for r in ranks)
    # Each rank holds about half of the trainable weights; together all of them.
    numel = sum(v.numel() for v in reference.values())
    assert sum(r["local_trainable_numel"] for r in ranks) == numel
    assert max(r["local_trainable_numel"] for r in ranks) < 0.6 * numel
    # Frozen weights did not move; the gathered trainable ones equal one process on the whole batch.
    assert result["frozen_after"].keys() == result["frozen_before"].keys()
    assert all(torch.equal(result["frozen_after"][k], result["frozen_before"][k]) for k in result["frozen_before"])
    assert_close_weights(result["trainable"], reference)
    assert not torch.equal(result["trainable"]["model.mapper.out.weight"], dist_workers.tiny_module().state_dict()["model.mapper.out.weight"])


@pytest.mark.slow
def test_a_kill_during_a_deepspeed_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    ckpt.mkdir()
    with pytest.raises(mp.ProcessExitedException):  # every rank dies half-way through the second save
        mp.spawn(dist_workers.deepspeed_kill_worker, args=(2, dist_workers.free_port(), str(ckpt), True), nprocs=2)
    assert (ckpt / "latest").read_text() == "before"
    assert (ckpt / "after").is_dir()  # the killed save's partial tag, never named by latest

    mp.spawn(dist_workers.deepspeed_kill_worker, args=(2, dist_workers.free_port(), str(ckpt), False), nprocs=2)
    for rank in range(2):
        loaded = torch.load(ckpt / f"loaded_rank{rank}.pt", weights_only=False)
        assert loaded["client"]["step"] == 2
        assert_close_weights(loaded["trainable"], torch.load(ckpt / f"saved_rank{rank}.pt", weights_only=False))
    assert_close_weights(export_trainable(ckpt, tmp_path / "w.safetensors"), loaded["trainable"])
