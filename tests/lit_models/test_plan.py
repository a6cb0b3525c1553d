"""Paper-size parameter counts on the meta device (SDXL base too), and `minigpt5 plan`'s arithmetic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_models.plan import (
    STRATEGIES,
    Footprint,
    ModelSizes,
    device_count,
    footprint,
    format_plan,
    make_plan,
    model_sizes,
    read_settings,
)
from minigpt5.config import ConfigError
from minigpt5.model import MiniGPT5
from minigpt5.sdxl import DualTextEncoder

ROOT = Path(__file__).resolve().parents[2]
STAGE1 = ["configs/uas.yaml", "configs/model/paper.yaml"]
STAGE2 = ["configs/uas.yaml", "configs/mls.yaml", "configs/mls_vist.yaml", "configs/model/paper.yaml"]


def settings(files: list[str], *flags: str):
    args = [a for f in files for a in ("-c", str(ROOT / f))]
    return read_settings([*args, *flags])


# ---- independent expectations, from the published architectures ----

def linear(fan_in: int, fan_out: int) -> int:
    return fan_in * fan_out + fan_out


def llama_7b(vocab: int = 32000, d: int = 4096, ff: int = 11008, layers: int = 32) -> int:
    layer = 4 * d * d + 3 * d * ff + 2 * d  # q k v o, gate up down, two RMSNorms
    return layers * layer + 2 * vocab * d + d  # + embedding, LM head (untied), final norm


def mapper(hidden: int = 4096, w: int = 1024, ff: int = 4096, layers: int = 4, queries: int = 77) -> dict[str, int]:
    attention = 4 * w * w + 4 * w  # in_proj (3w x w + 3w), out_proj
    feed_forward = linear(w, ff) + linear(ff, w)
    encoder = layers * (attention + feed_forward + 2 * 2 * w) + 2 * w  # + final norm
    decoder = layers * (2 * attention + feed_forward + 3 * 2 * w) + 2 * w
    # width 1024 = SD 2.1's cross-attention width: no output head
    return {"mlp": linear(hidden, w) + linear(w, w), "queries": queries * w, "transformer": encoder + decoder}


def eva_vit_g(d: int = 1408, ff: int = 6144, layers: int = 39, patch: int = 14, image: int = 224) -> int:
    layer = linear(d, 3 * d) + linear(d, d) + linear(d, ff) + linear(ff, d) + 2 * 2 * d
    embeddings = d + linear(3 * patch * patch, d) + ((image // patch) ** 2 + 1) * d  # class, patches, positions
    return layers * layer + embeddings + 2 * d  # + post-layernorm


def qformer(h: int = 768, ff: int = 3072, vision: int = 1408, layers: int = 12, every: int = 2, queries: int = 32) -> int:
    """MiniGPT-4's Q-Former: the queries' feed-forward only, no text branch (as in BLIP-2's
    FlanT5 checkpoints; the first-stage one, blip2-itm-vit-g, has a second, text feed-forward)."""
    self_attention = 4 * linear(h, h) + 2 * h
    feed_forward = linear(h, ff) + linear(ff, h) + 2 * h
    cross_attention = linear(h, h) + 2 * linear(vision, h) + linear(h, h) + 2 * h
    per_layer = self_attention + feed_forward
    return layers * per_layer + (layers // every) * cross_attention + 2 * h + queries * h


SD21_UNET, SD21_TEXT_ENCODER, SD21_VAE = 865_910_724, 340_387_840, 83_653_863  # published counts
VOKEN_ROWS = 2 * 8 * 4096  # input and output rows of 8 vokens
LORA = 32 * 2 * 8 * (4096 + 4096)  # layers x (q, v) x r (in + out)
PROJECTION = linear(768, 4096)  # Q-Former width -> LLM width


def counts(model: MiniGPT5) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def test_paper_stage1_counts_on_meta():
    model = MiniGPT5.on_meta(settings(STAGE1).model)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert sum(p.numel() for p in model.llm.parameters()) == llama_7b() == 6_738_415_616
    m = mapper()
    assert sum(p.numel() for p in model.mapper.parameters()) == sum(m.values())
    total, trainable = counts(model)
    assert trainable == VOKEN_ROWS + sum(m.values())
    assert total == llama_7b() + VOKEN_ROWS + sum(m.values()) + SD21_UNET + SD21_TEXT_ENCODER + SD21_VAE
    # Frozen weights in bf16 as configured; what trains stays fp32.
    assert {p.dtype for p in model.unet.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}


def test_paper_stage2_counts_on_meta():
    model = MiniGPT5.on_meta(settings(STAGE2).model)
    m = mapper()
    total, trainable = counts(model)
    tower = eva_vit_g() + qformer()  # Salesforce/blip2-flan-t5-xxl's, MiniGPT-4's Q-Former
    assert sum(p.numel() for p in model.vision.parameters()) == tower
    # Stage 2 trains LoRA, the voken rows and the mapper's transformer (not its MLP and
    # queries); the input projection is MiniGPT-4's, frozen, as in the official code.
    assert trainable == LORA + VOKEN_ROWS + m["transformer"]
    assert not model.input_projection.weight.requires_grad
    assert total == (llama_7b() + LORA + VOKEN_ROWS + sum(m.values()) + PROJECTION + tower
                     + SD21_UNET + SD21_TEXT_ENCODER + SD21_VAE)


def test_paper_recipe_is_the_default():
    s = settings(STAGE1)
    assert (s.precision, s.accumulate, s.batch_size, s.devices * s.num_nodes) == ("bf16-mixed", 6, 2, 1)
    assert s.batch_size * 4 * s.accumulate == 48  # the paper's effective batch on 4 GPUs
    s = settings(STAGE1, "--trainer.devices=8", "--trainer.num_nodes=2", "--data.init_args.batch_size=4")
    assert (s.world, s.batch_size) == (16, 4)


def test_llm_activations_match_the_published_per_layer_estimate():
    """Korthikanti et al. 2022: a transformer layer saves about 34 bytes per token per hidden
    unit in 16-bit without the attention matrix; Llama's SwiGLU MLP is close to that."""
    s = settings(STAGE1)
    plan = make_plan(s)
    b, t, d, layers = s.batch_size, s.model.llm.max_length, 4096, 32
    per_layer = (plan.activations_off.llm - plan.activations_on.llm) / layers
    assert 28 <= per_layer / (b * t * d) <= 40
    # Checkpointed, the LLM keeps little more than each layer's bf16 input.
    assert plan.activations_on.llm >= layers * b * t * d * 2
    assert plan.activations_on.unet < plan.activations_off.unet / 20


def test_footprints_by_hand(tiny_model):
    """The tiny model's footprint under each strategy, computed by hand for 4 GPUs."""
    model = tiny_model
    trainable = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("vokens.", "mapper.")))
    frozen = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("vokens.", "mapper.")))
    sizes = model_sizes(model)
    assert (sizes.trainable, sizes.frozen) == (trainable, frozen)
    assert (sizes.trainable_bytes, sizes.frozen_bytes) == (4 * trainable, 4 * frozen)  # all fp32
    numel = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    text = model.text_encoder
    candidates = [numel(layer) for layer in model.llm.model.layers]
    candidates += [numel(b) for b in [*model.unet.down_blocks, model.unet.mid_block, *model.unet.up_blocks]]
    candidates += [numel(model.mapper), numel(text.embeddings), *(numel(layer) for layer in text.encoder.layers)]
    candidates.append(numel(text.final_layer_norm))  # what the text-encoder unit owns beside its layers
    assert sizes.largest_unit == max(candidates)
    assert sizes.root_unit == (sum(p.numel() for p in model.vokens.parameters())
                               + model.llm.model.embed_tokens.weight.numel() + model.llm.lm_head.weight.numel()
                               + model.llm.model.norm.weight.numel()
                               + sum(p.numel() for n, p in model.unet.named_parameters()
                                     if not n.startswith(("down_blocks.", "mid_block.", "up_blocks."))))

    p_t, p_f, n, unit, root = trainable, frozen, 4, sizes.largest_unit, sizes.root_unit
    assert footprint("ddp", sizes, n, mixed=True) == Footprint(4 * p_f, 4 * p_t, 4 * p_t, 8 * p_t, 0)
    assert footprint("deepspeed_zero2", sizes, n, mixed=True) == Footprint(
        2 * p_f, 2 * p_t, 2 * p_t / n, (4 + 8) * p_t / n, 0)
    assert footprint("deepspeed_zero3", sizes, n, mixed=True) == Footprint(
        2 * p_f / n, 2 * p_t / n, 2 * p_t / n, 12 * p_t / n, 2 * unit * 2)
    assert footprint("deepspeed_zero2", sizes, n, mixed=False) == Footprint(4 * p_f, 4 * p_t, 4 * p_t / n, 8 * p_t / n, 0)
    assert footprint("fsdp", sizes, n, mixed=True) == Footprint(
        4 * p_f / n, 4 * p_t / n, 4 * p_t / n, 8 * p_t / n, (root + 2 * unit) * 2)
    with pytest.raises(ValueError, match="unknown strategy 'zero9'"):
        footprint("zero9", sizes, n, mixed=True)


def test_devices_must_be_a_count():
    assert device_count(8) == device_count("8") == device_count([0, 1, 2, 3, 4, 5, 6, 7]) == 8
    assert device_count("auto") == max(1, torch.cuda.device_count())
    for bad in (0, "0", "gpu", []):
        with pytest.raises(ConfigError, match="trainer.devices"):
            device_count(bad)


@pytest.mark.slow
def test_plan_command_runs_offline_on_the_paper_configs():
    args = [a for f in STAGE1 for a in ("-c", f)]
    out = subprocess.run(
        [sys.executable, "-m", "lit_models.cli", "plan", *args, "--trainer.devices=8"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "world size 8 (8 devices x 1 nodes)" in out.stdout
    assert f"parameters {llama_7b() + VOKEN_ROWS + sum(mapper().values()) + SD21_UNET + SD21_TEXT_ENCODER + SD21_VAE:,}" in out.stdout
    header = next(line for line in out.stdout.splitlines() if line.startswith("GiB per GPU"))
    assert header.split()[3:] == list(STRATEGIES)
    totals = next(line for line in out.stdout.splitlines() if line.startswith("total, checkpointing off"))
    ddp, zero2, zero3, fsdp = (float(v) for v in totals.split()[-4:])
    assert zero3 < fsdp < zero2 < ddp  # sharding the 8B frozen weights is what matters


# ---- SDXL base 1.0 (configs/model/sdxl.yaml) ----

SDXL = [*STAGE1, "configs/model/sdxl.yaml"]
# Published counts of stabilityai/stable-diffusion-xl-base-1.0's parts (the UNet is SDXL's "2.6B"):
# UNet, text_encoder (CLIP ViT-L/14's text tower), text_encoder_2 (OpenCLIP ViT-bigG/14's, with projection), VAE
SDXL_UNET, SDXL_TEXT_ENCODER, SDXL_TEXT_ENCODER_2, SDXL_VAE = 2_567_463_684, 123_060_480, 694_659_840, 83_653_863


def sdxl_mapper() -> int:
    """The paper's mapper (width 1024) with a head to SDXL's 2048-wide rows and the pooled head to 1280."""
    return sum(mapper().values()) + linear(1024, 2048) + linear(2048, 1280)


@pytest.fixture(scope="module")
def sdxl_settings():
    return settings(SDXL)


def test_sdxl_overlay_sizes_on_meta(sdxl_settings):
    cfg = sdxl_settings.model
    assert (cfg.diffusion.path, cfg.diffusion.kind, cfg.diffusion.resolution) == (
        "stabilityai/stable-diffusion-xl-base-1.0", "sdxl", 1024)
    assert cfg.llm.path == "Vision-CAIR/vicuna-7b"  # the paper's LLM
    model = MiniGPT5.on_meta(cfg)
    encoders = model.text_encoder
    assert isinstance(encoders, DualTextEncoder)
    numel = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert numel(model.unet) == SDXL_UNET
    assert numel(encoders.text_encoder) == SDXL_TEXT_ENCODER
    assert numel(encoders.text_encoder_2) == SDXL_TEXT_ENCODER_2
    assert numel(model.latents) == SDXL_VAE
    assert (encoders.width, encoders.pooled_width, model.condition_shape) == (2048, 1280, (78, 2048))
    assert numel(model.mapper) == sdxl_mapper()
    total, trainable = counts(model)
    assert trainable == VOKEN_ROWS + sdxl_mapper()
    assert total == (llama_7b() + VOKEN_ROWS + sdxl_mapper()
                     + SDXL_UNET + SDXL_TEXT_ENCODER + SDXL_TEXT_ENCODER_2 + SDXL_VAE)


def test_plan_figures_for_sdxl(sdxl_settings):
    plan = make_plan(sdxl_settings)
    text = format_plan(plan)
    total = llama_7b() + VOKEN_ROWS + sdxl_mapper() + SDXL_UNET + SDXL_TEXT_ENCODER + SDXL_TEXT_ENCODER_2 + SDXL_VAE
    assert f"parameters {total:,}" in text
    assert "1024px targets" in text
    # 128x128 latents through a 2.6B UNet: its activations exceed the LLM's at 512 tokens, and checkpointing cuts them.
    assert plan.activations_off.unet > plan.activations_off.llm > 0
    assert plan.activations_on.unet < plan.activations_off.unet / 2


# ---- SD3 medium (configs/model/sd3.yaml), without its optional T5 encoder ----

SD3 = [*STAGE1, "configs/model/sd3.yaml"]
# stabilityai/stable-diffusion-3-medium-diffusers' parts: the transformer (SD3 medium's "2B"), text_encoder (CLIP
# ViT-L/14's text tower with its projection), text_encoder_2 (OpenCLIP ViT-bigG/14's), the 16-channel VAE
SD3_TRANSFORMER, SD3_TEXT_ENCODER, SD3_TEXT_ENCODER_2, SD3_VAE = 2_028_328_000, 123_650_304, 694_659_840, 83_819_683


def sd3_mapper() -> int:
    """The paper's mapper with a head to the 4096-wide joint attention rows and the pooled head to 2048."""
    return sum(mapper().values()) + linear(1024, 4096) + linear(4096, 2048)


def test_sd3_overlay_sizes_and_plan_on_meta():
    run = settings(SD3)
    cfg = run.model
    assert (cfg.diffusion.kind, cfg.guidance.sampler, cfg.loss.timestep_density) == ("sd3", "flow-euler", "logit_normal")
    model = MiniGPT5.on_meta(cfg)
    encoders = model.text_encoder
    numel = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert type(model.unet).__name__ == "SD3Transformer2DModel" and model.flow_matching
    assert numel(model.unet) == SD3_TRANSFORMER
    assert (numel(encoders.text_encoder), numel(encoders.text_encoder_2)) == (SD3_TEXT_ENCODER, SD3_TEXT_ENCODER_2)
    assert numel(model.latents) == SD3_VAE and model.latents.shift_factor == 0.0609
    assert (encoders.width, encoders.pooled_width, model.condition_shape) == (4096, 2048, (78, 4096))
    total, trainable = counts(model)
    assert trainable == VOKEN_ROWS + sd3_mapper()
    expected = (llama_7b() + VOKEN_ROWS + sd3_mapper()
                + SD3_TRANSFORMER + SD3_TEXT_ENCODER + SD3_TEXT_ENCODER_2 + SD3_VAE)
    assert total == expected
    plan = make_plan(run)
    assert f"parameters {expected:,}" in format_plan(plan)
    assert plan.activations_on.unet < plan.activations_off.unet / 2  # its 24 joint blocks checkpointed
