"""``minigpt5 import-official``: fake official checkpoints, built the way the official code
builds its trainable parts (eric-ai-lab/MiniGPT-5 at 915ab17), land where they belong."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Optional

import pytest
import torch
from peft import LoraConfig, TaskType, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM

from lit_models.cli import main as cli_main
from lit_models.import_official import (
    DEFAULT_CONFIGS,
    OFFICIAL_LLM,
    OFFICIAL_SD,
    ImportMismatchError,
    OfficialCheckpointError,
    base_model_warnings,
    check_fits,
    convert_state,
    import_official,
    place_projection,
    read_config,
    required_tensors,
    write_outputs,
)
from lit_models.module import MiniGPT5Module
from minigpt5.architectures import SHIPPED_DIR
from minigpt5.config import LossConfig, MapperConfig, MiniGPT5Config, PeftSettings, VisionConfig
from minigpt5.model import MiniGPT5

ROOT = Path(__file__).resolve().parents[2]
ADDED = 9  # [IMG0]..[IMG7] + <ImageHere> (official mini_gpt5.py:48-59)
PEFT_ROOT = "model.llama_model.base_model.model."


# ---- the official trainable parts, as the official code builds them ----

class OfficialLike(nn.Module):
    """The parameters of the official MiniGPT5_Model that can train: the Llama (plain in
    stage 1, under PEFT with ``modules_to_save`` in stage 2) as ``model.llama_model``, and
    ``t2i_decoder_prompt``, ``llm_to_t2i_mapping``, ``fc`` (model.py:88-89, 104-108)."""

    def __init__(self, llama: LlamaConfig, sd_width: int, stage: int) -> None:
        super().__init__()
        self.model = nn.Module()
        llm = LlamaForCausalLM(llama)
        llm.requires_grad_(False)  # mini_gpt4.py:106-107
        if stage == 1:  # mini_gpt5.py:120-125: the whole (grad-masked) tables train
            llm.get_input_embeddings().weight.requires_grad_(True)
            llm.get_output_embeddings().weight.requires_grad_(True)
        else:  # mini_gpt5.py:98-116
            llm = get_peft_model(llm, LoraConfig(
                r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.05, bias="none",
                task_type=TaskType.CAUSAL_LM, modules_to_save=["lm_head", "embed_tokens"]))
            llm.base_model.model.model.embed_tokens.original_module.weight.requires_grad = False
            llm.base_model.model.lm_head.original_module.weight.requires_grad = False
        self.model.llama_model = llm
        self.t2i_decoder_prompt = nn.Parameter(torch.randn(1, 77, sd_width))
        self.llm_to_t2i_mapping = nn.Transformer(
            batch_first=True, norm_first=True, d_model=sd_width, num_encoder_layers=4, num_decoder_layers=4,
            dim_feedforward=sd_width * 4, dropout=0.0)
        self.fc = nn.Sequential(nn.Linear(llama.hidden_size, sd_width), nn.GELU(), nn.Linear(sd_width, sd_width))
        if stage == 2:  # model.py:118-123
            self.fc.requires_grad_(False)
            self.t2i_decoder_prompt.requires_grad_(False)

    def saved_state(self, seed: Optional[int] = 0) -> dict[str, torch.Tensor]:
        """What its checkpoint holds: the trainable tensors only (model.py:462-467), each
        filled with its own random values (``seed`` None keeps them, e.g. on meta)."""
        state = {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}
        if seed is None:
            return state
        g = torch.Generator().manual_seed(seed)
        return {n: torch.randn(t.shape, generator=g) for n, t in state.items()}

    def frozen_names(self) -> list[str]:
        return [n for n, p in self.named_parameters() if not p.requires_grad and not n.startswith(("fc.", "t2i"))]


def official_llama(model: MiniGPT5) -> LlamaConfig:
    """The official Llama for this project's tiny LLM: the same sizes, 9 added rows."""
    config = copy.deepcopy(model.llm.config)
    config.vocab_size = model.vokens.first_id + ADDED
    config.tie_word_embeddings = False
    return config


def save_official(state: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save({"state_dict": state, "pytorch-lightning_version": "2.1.0", "epoch": 1, "global_step": 100,
                "hyper_parameters": {"learning_rate": 2e-5, "gpus": [0, 1, 2, 3]}}, path)
    return path


def save_minigpt4(model: MiniGPT5, path: Path, seed: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    proj = model.input_projection
    state = {"llama_proj.weight": torch.randn(proj.weight.shape, generator=g),
             "llama_proj.bias": torch.randn(proj.bias.shape, generator=g)}
    torch.save({"model": state, "epoch": 4}, path)
    return state


# ---- this project's tiny models with the official structure ----

def tiny_config(stage: int) -> MiniGPT5Config:
    """The tiny preset with the official mapper's structure (width = the UNet's text width)."""
    mapper = MapperConfig(width=32, num_encoder_layers=4, num_decoder_layers=4, num_heads=8, ff_size=128,
                          num_queries=77, dropout=0.0, train_mlp_and_queries=stage == 1)
    if stage == 1:
        return MiniGPT5Config(mapper=mapper)
    return MiniGPT5Config(mapper=mapper, vision=VisionConfig(kind="blip2"), loss=LossConfig(cap_weight=0.0),
                          peft=PeftSettings(method="lora", lora_r=8, lora_alpha=16))


@pytest.fixture(scope="module")
def models() -> dict[int, MiniGPT5]:
    torch.manual_seed(0)
    return {stage: MiniGPT5(tiny_config(stage)) for stage in (1, 2)}


@pytest.fixture(scope="module")
def official(models, tmp_path_factory) -> dict[str, object]:
    """Stage-1 and stage-2 files (different values), MiniGPT-4's projection file, their states."""
    root = tmp_path_factory.mktemp("official")
    llama = official_llama(models[1])
    s1 = OfficialLike(llama, 32, stage=1).saved_state(seed=1)
    s2 = OfficialLike(llama, 32, stage=2).saved_state(seed=2)
    return {"s1": s1, "s2": s2, "stage1": save_official(s1, root / "stage1_cc3m.ckpt"),
            "stage2": save_official(s2, root / "stage2_vist.ckpt"),
            "p4": save_minigpt4(models[2], root / "prerained_minigpt4_7b.pth"),
            "minigpt4": root / "prerained_minigpt4_7b.pth"}


def expected_tensors(state: dict[str, torch.Tensor], base: int) -> dict[str, torch.Tensor]:
    """Where each official tensor belongs here, written out from the official names."""
    out = {}
    for key, value in state.items():
        if key.endswith(("embed_tokens.weight", "embed_tokens.modules_to_save.default.weight")):
            out["vokens.input_rows"] = value[base:base + 8]
        elif key.endswith(("lm_head.weight", "lm_head.modules_to_save.default.weight")):
            out["vokens.output_rows"] = value[base:base + 8]
        elif key == "t2i_decoder_prompt":
            out["mapper.queries"] = value[0]
        elif key.startswith("fc."):
            out["mapper.mlp." + key[len("fc."):]] = value
        elif key.startswith("llm_to_t2i_mapping."):
            out["mapper.transformer." + key[len("llm_to_t2i_mapping."):]] = value
        elif "lora_" in key:
            out["llm." + key[len("model.llama_model."):]] = value
        else:
            raise AssertionError(f"unexpected official key {key}")
    return out


def module_from(cfg: MiniGPT5Config, weights: Path) -> tuple[MiniGPT5Module, list[str]]:
    torch.manual_seed(1)
    module = MiniGPT5Module(config=cfg)
    return module, module.load_weights_from(str(weights))


def assert_holds(module: MiniGPT5Module, expected: dict[str, torch.Tensor]) -> None:
    own = module.model.state_dict()
    for key, value in expected.items():
        assert torch.equal(own[key], value), key


# ---- stage 1 ----

def test_stage1_import_lands_every_tensor(models, official, tmp_path):
    imported = import_official(official["stage1"])
    assert imported.stage == 1 and imported.base_vocab == models[1].vokens.first_id
    assert set(imported.sources.values()) == {f"stage1_cc3m.ckpt: {k}" for k in official["s1"]}  # nothing unmapped
    check_fits(imported, models[1])
    out, _ = write_outputs(imported, models[1], tmp_path / "cc3m.safetensors")

    module, fresh = module_from(tiny_config(1), out)
    assert fresh == []  # every trainable tensor came from the official file
    expected = expected_tensors(official["s1"], models[1].vokens.first_id)
    assert set(expected) == {k for k, p in module.model.named_parameters() if p.requires_grad}
    assert_holds(module, expected)
    # The <ImageHere> row (the last) is not a voken row.
    table = official["s1"]["model.llama_model.model.embed_tokens.weight"]
    assert not any(torch.equal(row, table[-1]) for row in module.model.vokens.input_rows.detach())


def test_imported_mapper_computes_what_the_official_one_does(models, official, tmp_path):
    s1 = official["s1"]
    out, _ = write_outputs(import_official(official["stage1"]), models[1], tmp_path / "w.safetensors")
    module, _ = module_from(tiny_config(1), out)
    ref = OfficialLike(official_llama(models[1]), 32, stage=1)
    ref.load_state_dict(s1, strict=False)
    features = torch.randn(3, 8, models[1].llm.config.hidden_size)
    with torch.no_grad():  # model.py:282-283
        want = ref.llm_to_t2i_mapping(src=ref.fc(features), tgt=ref.t2i_decoder_prompt.repeat(3, 1, 1))
        got = module.model.eval().condition(features)
    torch.testing.assert_close(got, want)


# ---- stage 2 ----

def test_stage2_over_stage1_with_minigpt4_projection(models, official, tmp_path):
    imported = import_official(official["stage2"], official["stage1"], official["minigpt4"])
    assert imported.stage == 2
    check_fits(imported, models[2])
    out, ckpt = write_outputs(imported, models[2], tmp_path / "vist.safetensors")

    module, fresh = module_from(tiny_config(2), out)
    assert fresh == []
    base = models[2].vokens.first_id
    from_stage1 = {k: v for k, v in expected_tensors(official["s1"], base).items()
                   if k.startswith(("mapper.mlp.", "mapper.queries"))}
    expected = {**from_stage1, **expected_tensors(official["s2"], base),
                "input_projection.weight": official["p4"]["llama_proj.weight"],
                "input_projection.bias": official["p4"]["llama_proj.bias"]}
    assert any(".lora_A." in k for k in expected) and any(".lora_B." in k for k in expected)
    filled = {k for k, p in module.model.named_parameters() if p.requires_grad or k.startswith("mapper.")}
    assert filled == set(expected)
    assert_holds(module, expected)

    # The checkpoint beside it is what generate --ckpt and eval --ckpt load.
    loaded = MiniGPT5Module.from_checkpoint(str(ckpt))
    assert loaded.config == models[2].cfg
    assert_holds(loaded, expected)


def test_stage2_without_stage1_names_the_mapper_mlp(models, official):
    imported = import_official(official["stage2"], minigpt4=official["minigpt4"])
    with pytest.raises(ImportMismatchError, match=r"(?s)mapper\.mlp\.0\.weight.*mapper\.queries.*--stage1"):
        check_fits(imported, models[2])


def test_stage2_without_minigpt4_names_the_input_projection(models, official):
    imported = import_official(official["stage2"], official["stage1"])
    with pytest.raises(ImportMismatchError, match=r"(?s)input_projection\.weight.*--minigpt4"):
        check_fits(imported, models[2])


def test_stage2_file_under_a_stage1_config_names_the_lora_tensors(models, official):
    imported = import_official(official["stage2"], official["stage1"])
    named = r"have no place in this model:\n  llm\.base_model\.model\.model\.layers\.0"
    with pytest.raises(ImportMismatchError, match=named):
        check_fits(imported, models[1])


def test_stage1_file_given_as_stage2(official):
    with pytest.raises(OfficialCheckpointError, match="--stage1 takes the stage-1 file"):
        import_official(official["stage1"], official["stage2"])


# ---- what is not mapped ----

def test_an_extra_official_tensor_is_named(official, tmp_path):
    state = {**official["s1"], "model.prefix_encoder.embedding.weight": torch.zeros(5, 4)}
    with pytest.raises(OfficialCheckpointError, match=r"model\.prefix_encoder\.embedding\.weight"):
        import_official(save_official(state, tmp_path / "extra.ckpt"))


def test_a_missing_official_tensor_is_named(models, official, tmp_path):
    state = {k: v for k, v in official["s1"].items() if k != "llm_to_t2i_mapping.decoder.norm.bias"}
    imported = import_official(save_official(state, tmp_path / "missing.ckpt"))
    named = r"not filled by the import:\n  mapper\.transformer\.decoder\.norm\.bias"
    with pytest.raises(ImportMismatchError, match=named):
        check_fits(imported, models[1])


def test_frozen_official_tensors_are_skipped(models, official, tmp_path):
    """Every frozen Llama tensor under either layout (PEFT's base_layer and original_module
    copies included), the towers and SD's parts: skipped, listed, not an error."""
    llama = official_llama(models[1])
    frozen = OfficialLike(llama, 32, stage=2).frozen_names() + OfficialLike(llama, 32, stage=1).frozen_names()
    assert any(".base_layer." in n for n in frozen) and any("original_module" in n for n in frozen)
    others = ["model.Qformer.bert.encoder.layer.0.attention.self.query.weight", "model.query_tokens",
              "model.visual_encoder.blocks.0.attn.qkv.weight", "model.ln_vision.weight",
              "unet.conv_in.weight", "vae.decoder.conv_out.bias", "sd_text_encoder.text_model.final_layer_norm.weight"]
    state = {**official["s1"], **{k: torch.zeros(1) for k in frozen + others}}
    imported = convert_state(state, "with_frozen.ckpt")
    assert sorted(imported.ignored) == sorted(frozen + others)
    assert set(imported.weights) == set(convert_state(official["s1"], "plain.ckpt").weights)


def test_another_vocabulary_is_named(models, official, tmp_path):
    state = dict(official["s1"])
    for key in ("model.llama_model.model.embed_tokens.weight", "model.llama_model.lm_head.weight"):
        state[key] = torch.cat([torch.zeros(1, state[key].shape[1]), state[key]])
    imported = import_official(save_official(state, tmp_path / "vocab.ckpt"))
    first = models[1].vokens.first_id
    with pytest.raises(ImportMismatchError, match=rf"{first + 1} rows before the added tokens.*first voken id is {first}"):
        check_fits(imported, models[1])


@pytest.mark.parametrize("change, named", [
    ({"ff_size": 64}, r"shape mismatch.*\n  mapper\.transformer\.decoder\.layers\.0\.linear1\.bias: \(128,\)"),
    ({"num_encoder_layers": 2}, r"no place in this model:\n  mapper\.transformer\.encoder\.layers\.2\."),
])
def test_a_mapper_of_another_shape_is_named(official, change, named):
    cfg = tiny_config(1)
    cfg.mapper = MapperConfig(**{**vars(cfg.mapper), **change})
    with pytest.raises(ImportMismatchError, match=named):
        check_fits(import_official(official["stage1"]), MiniGPT5.on_meta(cfg))


def test_files_that_are_not_official_checkpoints(models, tmp_path):
    own = tmp_path / "own.safetensors"
    save_file({"model.vokens.input_rows": torch.zeros(8, 4)}, str(own))
    with pytest.raises(OfficialCheckpointError, match="own.safetensors' is a safetensors file, this project's"):
        import_official(own)
    project = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in models[1].trainable_state_dict().items()}}, project)
    with pytest.raises(OfficialCheckpointError, match="no llm_to_t2i_mapping.* tensors: not an official"):
        import_official(project)
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    with pytest.raises(OfficialCheckpointError, match="notes.ckpt' is not a torch checkpoint"):
        import_official(tmp_path / "notes.ckpt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "bare.pt")
    with pytest.raises(OfficialCheckpointError, match="has no 'state_dict'"):
        import_official(tmp_path / "bare.pt")
    torch.save({"state_dict": {"llm_to_t2i_mapping.encoder.norm.bias": torch.zeros(2)}, "cfg": OfficialLike},
               tmp_path / "code.ckpt")
    with pytest.raises(OfficialCheckpointError, match="Unsupported global.*--allow-pickle"):
        import_official(tmp_path / "code.ckpt")
    with pytest.raises(OfficialCheckpointError, match="no voken table"):
        import_official(tmp_path / "code.ckpt", allow_pickle=True)
    with pytest.raises(FileNotFoundError, match="nowhere.ckpt"):
        import_official(tmp_path / "nowhere.ckpt")


# ---- the paper preset against the official sizes ----

def official_on_meta(stage: int) -> OfficialLike:
    """The official trainable parts at full size: Vicuna-7B with 9 added rows, SD 2.1's
    1024-wide text space (model.py:87-89)."""
    llama = AutoConfig.from_pretrained(SHIPPED_DIR / "vicuna-7b-v1.5")
    llama.vocab_size += ADDED
    with torch.device("meta"):
        return OfficialLike(llama, 1024, stage)


@pytest.mark.parametrize("stage", [1, 2])
def test_paper_preset_has_the_official_shapes(stage):
    """On the meta device: the official files fill the paper preset's model (this command's
    default configs) exactly; the mapper's heads and norm placement agree too."""
    ref = official_on_meta(stage)
    imported = convert_state(official_on_meta(1).saved_state(seed=None), "stage1_cc3m.ckpt")
    if stage == 2:  # MiniGPT-4's llama_proj is frozen in the paper preset: it loads from vision.projection_path
        imported.update(convert_state(ref.saved_state(seed=None), "stage2_vist.ckpt"))
    cfg, _ = read_config([a for c in DEFAULT_CONFIGS[stage] for a in ("-c", str(ROOT / c))])
    model = MiniGPT5.on_meta(cfg)
    check_fits(imported, model)
    assert len(imported.weights) == len(required_tensors(model))
    ours, theirs = model.mapper.transformer.encoder.layers[0], ref.llm_to_t2i_mapping.encoder.layers[0]
    assert (ours.self_attn.num_heads, ours.norm_first) == (theirs.self_attn.num_heads, theirs.norm_first) == (8, True)


# ---- the command ----

def test_command_writes_files_generate_and_eval_load(models, official, tmp_path):
    overlay = tmp_path / "official_structure.yaml"
    overlay.write_text("model:\n  config:\n    mapper:\n      width: 32\n      num_encoder_layers: 4\n"
                       "      num_decoder_layers: 4\n      num_heads: 8\n      ff_size: 128\n")
    configs = ["configs/uas.yaml", "configs/mls.yaml", "configs/model/tiny.yaml", str(overlay)]
    out = tmp_path / "imported" / "vist.safetensors"
    argv = ["import-official", "--ckpt", str(official["stage2"]), "--stage1", str(official["stage1"]),
            "--minigpt4", str(official["minigpt4"]), "--out", str(out)]
    assert cli_main(argv + [a for c in configs for a in ("-c", str(ROOT / c))]) == 0
    weights = load_file(str(out))
    assert torch.equal(weights["model.vokens.output_rows"],
                       official["s2"][PEFT_ROOT + "lm_head.modules_to_save.default.weight"][-ADDED:-1])
    loaded = MiniGPT5Module.from_checkpoint(str(out.with_suffix(".ckpt")))
    assert loaded.config.peft.method == "lora" and loaded.config.mapper.num_encoder_layers == 4
    assert torch.equal(loaded.model.mapper.queries.detach(), official["s1"]["t2i_decoder_prompt"][0])

    # Without --stage1: a clear error, exit code 2, nothing written.
    bad = tmp_path / "bad" / "vist.safetensors"
    argv = ["import-official", "--ckpt", str(official["stage2"]), "--minigpt4", str(official["minigpt4"]),
            "--out", str(bad)]
    assert cli_main(argv + [a for c in configs for a in ("-c", str(ROOT / c))]) == 2
    assert not bad.exists()


def test_base_models_other_than_the_official_ones_are_warned_about():
    cfg, _ = read_config([a for c in DEFAULT_CONFIGS[2] for a in ("-c", str(ROOT / c))])
    official_bases = replace(cfg, llm=replace(cfg.llm, path=OFFICIAL_LLM),
                             diffusion=replace(cfg.diffusion, path=OFFICIAL_SD))
    [tower] = base_model_warnings(official_bases)  # stage 2 reads images: the tower is named
    assert "blip2_pretrained_flant5xxl.pth" in tower
    assert base_model_warnings(replace(official_bases, vision=VisionConfig())) == []
    other = replace(official_bases, llm=replace(cfg.llm, path="lmsys/vicuna-7b-v1.5"))
    note, _ = base_model_warnings(other)
    assert "lmsys/vicuna-7b-v1.5" in note and OFFICIAL_LLM in note


def test_a_frozen_projection_goes_to_the_config_not_the_weights(official, tmp_path):
    """Under the paper preset the projection is frozen: it loads from vision.projection_path."""
    imported = import_official(official["stage2"], official["stage1"], official["minigpt4"])
    assert "input_projection.weight" in imported.weights
    vision = VisionConfig(kind="blip2", projection_path="elsewhere.pth", train_projection=False)
    cfg = place_projection(imported, MiniGPT5Config(vision=vision), official["minigpt4"])
    assert not any(k.startswith("input_projection.") for k in imported.weights)
    assert cfg.vision.projection_path == str(Path(official["minigpt4"]).resolve())
    trained = MiniGPT5Config(vision=VisionConfig(kind="blip2"))  # the tiny default trains it: it stays in the file
    again = import_official(official["stage2"], official["stage1"], official["minigpt4"])
    assert place_projection(again, trained, official["minigpt4"]) is trained and "input_projection.bias" in again.weights
