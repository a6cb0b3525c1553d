"""The input side as the official code has it: MiniGPT-4's projection (loaded, frozen),
training flips of target and context images, the mapper's query init, prefix projection."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lit_models.optim import OptimConfig, param_groups
from lit_models.plan import read_settings
from minigpt5.config import AugmentConfig, ConfigError, MapperConfig, MiniGPT5Config, PeftSettings, VisionConfig
from minigpt5.images import flip_where
from minigpt5.loading import WeightsNotFoundError
from minigpt5.model import MiniGPT5
from minigpt5.projection import ProjectionCheckpointError

ROOT = Path(__file__).resolve().parents[2]
TINY_TOWER = VisionConfig().hidden_size  # the tiny Q-Former's width
TINY_LLM = MiniGPT5Config().llm.hidden_size


def minigpt4_checkpoint(path: Path, width: int = TINY_TOWER, hidden: int = TINY_LLM) -> dict[str, torch.Tensor]:
    """A small file in MiniGPT-4's layout (runner_base.py: trainable tensors under "model", plus
    optimizer, config, scaler and epoch); returns the projection tensors written."""
    g = torch.Generator().manual_seed(7)
    proj = {"llama_proj.weight": torch.randn(hidden, width, generator=g),
            "llama_proj.bias": torch.randn(hidden, generator=g)}
    torch.save({"model": proj, "optimizer": {"state": {}, "param_groups": [{"lr": 3e-5}]},
                "config": {"model": {"arch": "mini_gpt4"}}, "scaler": None, "epoch": 4}, path)
    return proj


def vision_model(**vision) -> MiniGPT5:
    torch.manual_seed(0)
    return MiniGPT5(MiniGPT5Config(vision=VisionConfig(kind="blip2", **vision)))


# ---- MiniGPT-4's projection ----

def test_minigpt4_projection_loads_frozen_and_stays_out_of_optimizer_and_checkpoints(tmp_path):
    file = tmp_path / "prerained_minigpt4_7b.pth"
    proj = minigpt4_checkpoint(file)
    model = vision_model(projection_path=str(file), train_projection=False)
    assert torch.equal(model.input_projection.weight, proj["llama_proj.weight"])
    assert torch.equal(model.input_projection.bias, proj["llama_proj.bias"])
    assert not any(p.requires_grad for p in model.input_projection.parameters())
    grouped = {id(p) for g in param_groups(model, OptimConfig(), ("mapper.",)) for p in g["params"]}
    assert grouped and not any(id(p) in grouped for p in model.input_projection.parameters())
    assert not any(k.startswith("input_projection.") for k in model.trainable_state_dict())


def test_minigpt4_projection_can_start_a_trained_projection(tmp_path):
    file = tmp_path / "minigpt4.pth"
    proj = minigpt4_checkpoint(file)
    model = vision_model(projection_path=str(file))  # train_projection defaults to true
    assert torch.equal(model.input_projection.weight, proj["llama_proj.weight"])
    assert all(p.requires_grad for p in model.input_projection.parameters())
    assert {"input_projection.weight", "input_projection.bias"} <= set(model.trainable_state_dict())


def test_missing_projection_file_is_named(tmp_path):
    missing = tmp_path / "weights" / "prerained_minigpt4_7b.pth"
    named = r"vision\.projection_path '.*weights/prerained_minigpt4_7b\.pth' does not exist.*config/prerained_minigpt4_7b"
    with pytest.raises(WeightsNotFoundError, match=named):
        vision_model(projection_path=str(missing), train_projection=False)


def test_projection_of_the_wrong_shape_is_refused_with_both_shapes(tmp_path):
    file = tmp_path / "minigpt4.pth"
    minigpt4_checkpoint(file, width=768, hidden=4096)  # the real 7B projection into a tiny model
    shapes = rf"llama_proj\.weight in vision\.projection_path '.*minigpt4\.pth' has shape \(4096, 768\).*" \
             rf"needs \({TINY_LLM}, {TINY_TOWER}\)"
    with pytest.raises(ProjectionCheckpointError, match=shapes):
        vision_model(projection_path=str(file), train_projection=False)


def test_checkpoint_without_llama_proj_lists_what_it_has(tmp_path):
    file = tmp_path / "other.pth"
    torch.save({"model": {"Qformer.bert.x": torch.zeros(1)}}, file)
    lacking = r"other\.pth' has no llama_proj\.weight and llama_proj\.bias.*Qformer\.bert\.x"
    with pytest.raises(ProjectionCheckpointError, match=lacking):
        vision_model(projection_path=str(file))
    file.write_bytes(b"not a checkpoint")
    with pytest.raises(ProjectionCheckpointError, match=r"other\.pth' is not a readable PyTorch checkpoint"):
        vision_model(projection_path=str(file))


def test_a_frozen_projection_needs_weights():
    with pytest.raises(ConfigError, match="vision.projection_path"):
        VisionConfig(kind="blip2", train_projection=False)
    VisionConfig(kind="none", train_projection=False)  # no projection is built: nothing to check


def test_the_tiny_default_projection_is_random_and_trained():
    model = vision_model()
    assert all(p.requires_grad for p in model.input_projection.parameters())


def test_plan_builds_the_frozen_projection_without_the_file():
    vision = VisionConfig(kind="blip2", projection_path="/nowhere/minigpt4.pth", train_projection=False)
    model = MiniGPT5.on_meta(MiniGPT5Config(vision=vision))
    assert model.input_projection.weight.is_meta and not model.input_projection.weight.requires_grad


# ---- the paper preset ----

def test_paper_preset_follows_the_official_input_side():
    files = ["configs/uas.yaml", "configs/mls.yaml", "configs/mls_vist.yaml", "configs/model/paper.yaml"]
    cfg = read_settings([a for f in files for a in ("-c", str(ROOT / f))]).model
    assert cfg.llm.path == "Vision-CAIR/vicuna-7b"  # minigpt4/configs/models/minigpt4.yaml:16
    assert cfg.vision.path == "Salesforce/blip2-flan-t5-xxl"  # MiniGPT-4's Q-Former (blip2_pretrained_flant5xxl.pth)
    assert cfg.vision.projection_path.endswith("prerained_minigpt4_7b.pth") and cfg.vision.train_projection is False
    assert cfg.augment.hflip == 0.5 and cfg.mapper.query_init_std == 1.0
    assert (cfg.peft.method, cfg.peft.num_virtual_tokens, cfg.peft.prefix_projection, cfg.peft.prefix_hidden_size) == (
        "lora", 5, True, 1024)


def test_tiny_defaults_keep_this_projects_choices():
    cfg = MiniGPT5Config()
    assert cfg.vision.train_projection and cfg.vision.projection_path is None
    assert (cfg.augment.hflip, cfg.mapper.query_init_std, cfg.peft.num_virtual_tokens, cfg.peft.prefix_projection) == (
        0.0, 0.02, 32, False)


# ---- mapper queries and prefix tuning ----

def test_mapper_query_init_std_is_configurable():
    torch.manual_seed(0)
    official = MiniGPT5(MiniGPT5Config(mapper=MapperConfig(num_queries=77, query_init_std=1.0))).mapper.queries
    torch.manual_seed(0)
    tiny = MiniGPT5(MiniGPT5Config()).mapper.queries
    assert 0.9 < official.std().item() < 1.1 and 0.015 < tiny.std().item() < 0.025


def test_prefix_tuning_with_projection_as_the_official_code():
    torch.manual_seed(0)
    model = MiniGPT5(MiniGPT5Config(peft=PeftSettings(method="prefix", num_virtual_tokens=5, prefix_projection=True,
                                                      prefix_hidden_size=24)))
    trainable = {n: p.shape for n, p in model.named_parameters() if n.startswith("llm.") and p.requires_grad}
    d, layers = TINY_LLM, MiniGPT5Config().llm.num_layers
    shapes = sorted(tuple(s) for s in trainable.values())
    # PEFT's PrefixEncoder: an embedding of 5 tokens, then Linear(d, 24), Tanh, Linear(24, layers * 2 * d).
    assert shapes == sorted([(5, d), (24, d), (24,), (layers * 2 * d, 24), (layers * 2 * d,)])
    batch = model.caption_batch(["a red circle"])
    logits, _ = model.llm_forward(batch["input_ids"], batch["attention_mask"])
    assert torch.isfinite(logits).all()


# ---- horizontal flips ----

def test_flip_where_mirrors_only_the_chosen_rows():
    x = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).view(2, 1, 2, 3)
    out = flip_where(x, torch.tensor([True, False]))
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1])
    assert flip_where(x, None) is x


def test_training_flips_only_in_training_and_draw_nothing_when_off(tiny_model):
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    tiny_model.train()
    assert tiny_model.training_flips(4, g, torch.device("cpu")) is None  # tiny default: off
    assert torch.equal(g.get_state(), state)
    tiny_model.cfg.augment = AugmentConfig(hflip=1.0)
    assert tiny_model.training_flips(4, g, torch.device("cpu")).all()
    tiny_model.eval()
    assert tiny_model.training_flips(4, g, torch.device("cpu")) is None


def test_target_flips_mirror_the_pixels_the_ldm_loss_sees(caption_batch):
    """hflip 1 on images X gives the loss of no flip (but the same draws) on X mirrored."""
    torch.manual_seed(0)
    model = MiniGPT5(MiniGPT5Config(augment=AugmentConfig(hflip=1.0))).train()
    batch = caption_batch(model, ["a red circle", "a blue square"], generator=torch.Generator().manual_seed(1))
    mirrored = {**batch, "target_pixels": batch["target_pixels"].flip(-1)}

    def ldm(b: dict, p: float) -> torch.Tensor:
        model.cfg.augment = AugmentConfig(hflip=p)
        return model(b, generator=[torch.Generator().manual_seed(s) for s in (5, 6)]).ldm

    flipped = ldm(batch, 1.0)
    assert torch.equal(flipped, ldm(mirrored, 1e-12))  # 1e-12: the same draws, no flip
    assert not torch.equal(flipped, ldm(batch, 1e-12))


def test_cached_target_moments_are_mirrored_too():
    from minigpt5.config import DiffusionConfig

    torch.manual_seed(0)
    model = MiniGPT5(MiniGPT5Config(diffusion=DiffusionConfig(latent_space="vae")))
    size = model.cfg.diffusion.resolution // model.latents.downsample_factor
    moments = torch.randn(2, 2 * model.latents.channels, size, size)
    flips = torch.tensor([True, False])
    g = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    got = model.target_latents({"target_latent_moments": moments}, g(), flips)
    assert torch.equal(got, model.latents.sample(flip_where(moments, flips), g()))


def test_context_images_are_flipped_in_training_only():
    model = vision_model()
    ids = torch.tensor([[1] + [model.image_token_id] * model.vision.num_tokens + [5, 6]])
    pixels = torch.randn(1, 3, 32, 32)
    model.cfg.augment = AugmentConfig(hflip=1.0)
    model.train()
    flipped = model.embed_inputs(ids, pixels)
    model.eval()
    plain = model.embed_inputs(ids, pixels)
    assert torch.allclose(flipped, model.embed_inputs(ids, pixels.flip(-1)))
    assert not torch.allclose(flipped, plain)


def test_tower_reads_a_blip2_checkpoint_with_a_language_model(tmp_path):
    """The paper preset's tower path, Salesforce/blip2-flan-t5-xxl, is a Blip2ForConditionalGeneration
    (T5 included): the tower keeps its ViT, Q-Former and queries and computes what it computes."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration, T5Config

    from minigpt5.vision import VisionTower, tiny_tower_config

    hf = tiny_tower_config(VisionConfig(kind="blip2")).to_dict()
    t5 = T5Config(vocab_size=50, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=0)
    torch.manual_seed(0)
    source = Blip2ForConditionalGeneration(Blip2Config(
        vision_config=hf["vision_config"], qformer_config=hf["qformer_config"], text_config=t5.to_dict(),
        num_query_tokens=hf["num_query_tokens"])).eval()
    source.save_pretrained(tmp_path)
    tower = VisionTower(VisionConfig(kind="blip2", path=str(tmp_path))).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        queries = source.query_tokens.expand(2, -1, -1)
        expected = source.qformer(query_embeds=queries,
                                  encoder_hidden_states=source.vision_model(pixel_values=x).last_hidden_state)
        assert torch.allclose(tower(x), expected.last_hidden_state)


def test_checkpoint_refuses_a_projection_file_that_changed(tmp_path):
    import lightning

    from lit_models.module import MiniGPT5Module
    from minigpt5.fingerprint import FrozenPartsChanged

    file = tmp_path / "prerained_minigpt4_7b.pth"
    minigpt4_checkpoint(file)
    config = MiniGPT5Config(vision=VisionConfig(kind="blip2", projection_path=str(file), train_projection=False))
    module = MiniGPT5Module(config)
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                  "pytorch-lightning_version": lightning.__version__}
    module.on_save_checkpoint(checkpoint)
    assert not any("input_projection" in k for k in checkpoint["state_dict"])  # frozen: comes from the file
    ckpt = tmp_path / "stage2.ckpt"
    torch.save(checkpoint, ckpt)
    loaded = MiniGPT5Module.from_checkpoint(str(ckpt))
    assert torch.equal(loaded.model.input_projection.weight, module.model.input_projection.weight)
    torch.save({"model": {k: v + 1 for k, v in torch.load(file)["model"].items()}}, file)  # another projection
    with pytest.raises(FrozenPartsChanged, match=r"input_projection \(from .*prerained_minigpt4_7b\.pth\)"):
        MiniGPT5Module.from_checkpoint(str(ckpt))
