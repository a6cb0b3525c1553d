"""``minigpt5 import-official``: the authors' released checkpoints as this project's weights.

  minigpt5 import-official --ckpt stage1_cc3m.ckpt --out outputs/official/cc3m.safetensors
  minigpt5 import-official --ckpt stage2_vist.ckpt --stage1 stage1_cc3m.ckpt \\
      --minigpt4 prerained_minigpt4_7b.pth --out outputs/official/vist.safetensors

Writes ``--out``, a trainable-weights file like ``minigpt5 export``'s (for
``--model.init_from``), and beside it a MiniGPT5Module checkpoint (same name, ``.ckpt``)
holding the ``-c`` config (default: the paper preset of the file's stage), for
``minigpt5 generate --ckpt`` and ``minigpt5 eval --ckpt``. That checkpoint starts from
the ``.safetensors`` file (its ``init_from``, an absolute path): keep the two together.
The checkpoint is read memory-mapped and without unpickling code (``--allow-pickle``
lifts the second, for files you trust).

Official names, at eric-ai-lab/MiniGPT-5 commit 915ab17 (file:line there). The Lightning
module holds the MiniGPT-4-style model as ``model`` (model.py:70), which holds the Llama as
``llama_model`` (mini_gpt4.py:101) and the Q-Former projection as ``llama_proj``
(mini_gpt4.py:110-112); a file keeps only the tensors that were trainable (model.py:462-467).

=====================================================================  ==================  =========================
official tensor                                                        shape (paper)       here
=====================================================================  ==================  =========================
``fc.0.weight`` ``fc.0.bias`` ``fc.2.*`` (model.py:104-108)            (1024, 4096) ...    ``mapper.mlp.0.*`` ``.2.*``
``llm_to_t2i_mapping.*``: nn.Transformer, d_model 1024, 4 + 4          as nn.Transformer   ``mapper.transformer.*``
layers, ff 4096, norm_first, batch_first, dropout 0 (model.py:89)
``t2i_decoder_prompt`` (model.py:88)                                   (1, 77, 1024)       ``mapper.queries`` (77, 1024)
stage 1: ``model.llama_model.model.embed_tokens.weight``,              (32009, 4096)       rows 32000-32007:
``model.llama_model.lm_head.weight`` (mini_gpt5.py:120-125);                               ``vokens.input_rows``,
stage 2: ``model.llama_model.base_model.model.`` +                                         ``vokens.output_rows``
``model.embed_tokens.modules_to_save.default.weight``,                                     (8, 4096)
``lm_head.modules_to_save.default.weight`` (PEFT's ``modules_to_save``,
mini_gpt5.py:105-116)
stage 2: ``model.llama_model.base_model.model.model.layers.{i}.``      (8, 4096),          ``llm.base_model.model.`` +
``self_attn.{q,v}_proj.lora_{A,B}.default.weight`` (r 8, alpha 16,     (4096, 8)           the same tail (PEFT's
q and v: mini_gpt5.py:98-114; names modeling_llama.py:159-161, 602)                        names on both sides)
MiniGPT-4's ``prerained_minigpt4_7b.pth``, ``["model"]["llama_proj.*"]``  (4096, 768)      ``input_projection.*``
(loaded by mini_gpt4.py:266-270, frozen by mini_gpt5.py:141-142, so
in no MiniGPT-5 file: ``--minigpt4``)
=====================================================================  ==================  =========================

The voken rows. MiniGPT-5 adds ``[IMG0]``..``[IMG7]`` and then ``<ImageHere>`` to Vicuna's
32000 tokens (mini_gpt5.py:48-59; ``pad`` is ``eos``, mini_gpt4.py:91, so no pad row) and
trains the whole embedding table and LM head with every gradient but those 9 rows zeroed
(mini_gpt5.py:80-85, 387-399). Rows V..V+7 (V = rows - 9) are the vokens. The
``<ImageHere>`` row is dropped: its input row is never read (its positions get the image
features, mini_gpt5.py:197-220) and its LM-head row is never a target (-100 there,
mini_gpt5.py:208-219); this project has no logit for it. The other rows are dropped too:
this project uses the base LLM's own rows, while the official optimizer (torch AdamW,
default weight decay 0.01, model.py:242) shrank them by (1 - lr * 0.01) per step despite the
zeroed gradients.

Stages. A stage-2 file lacks ``fc`` and ``t2i_decoder_prompt``, frozen in stage 2
(model.py:118-123). The official code builds the stage-2 model from the stage-1 file and
loads the stage-2 file over it (train_eval.py:117-121, 213-218); ``--stage1`` does the same.

Ignored, when a file holds them (the released ones should not, being trainable-only):
the frozen parts matched by :data:`FROZEN` (the Llama's base weights and PEFT's
``original_module`` copies, EVA-ViT, Q-Former, SD's text encoder, VAE and UNet). Any other
official tensor is an error naming it, and so is every tensor of this project's model
that the import must fill (:func:`required_tensors`) but does not, or fills with the wrong
shape. In the written files each name above is under ``model.``, as in MiniGPT5Module's
state dict.

The paper preset. Its mapper (``configs/model/paper.yaml``: width 1024, 4 + 4 layers, 8
heads as nn.Transformer's default, ff 4096, 77 queries, dropout 0, pre-norm) and its
stage-2 LoRA (``configs/mls.yaml``: r 8, alpha 16, q and v) have the official shapes as
they are; nothing needs changing there (tested on the meta device against the official
structure at full size). Shapes cannot tell the base models apart: the official weights
were trained on Vicuna v0 7B, SD 2.1 base and MiniGPT-4's vision tower, so the command
warns when the config's ``llm.path`` or ``diffusion.path`` names others, and names the
tower to check (:func:`base_model_warnings`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import lightning
import torch
from safetensors.torch import save_file

from lit_models import checkpoint_files
from lit_models.lightning_cli import dataclass_from, fit_config
from lit_models.optim import OptimConfig
from minigpt5.config import MiniGPT5Config
from minigpt5.loading import WeightsNotFoundError
from minigpt5.model import MiniGPT5
from minigpt5.projection import read_minigpt4_projection as minigpt4_projection

PathLike = Union[str, Path]

MODULE_PREFIX = "model."  # MiniGPT5Module holds MiniGPT5 as ``model``
PEFT_ROOT = "model.llama_model.base_model.model."  # the Llama under PEFT's wrapper (stage 2)
# The full embedding / LM-head tables holding the voken rows: official key -> (this project's key, stage).
VOKEN_TABLES = {
    "model.llama_model.model.embed_tokens.weight": ("vokens.input_rows", 1),
    "model.llama_model.lm_head.weight": ("vokens.output_rows", 1),
    PEFT_ROOT + "model.embed_tokens.modules_to_save.default.weight": ("vokens.input_rows", 2),
    PEFT_ROOT + "lm_head.modules_to_save.default.weight": ("vokens.output_rows", 2),
}
OFFICIAL_VOKENS = 8  # [IMG0]..[IMG7] (constants.py:15-16)
QUERIES = "t2i_decoder_prompt"  # (1, Q, W) -> mapper.queries (Q, W)
# One-to-one renames: official pattern -> this project's name.
RENAMES = (
    (re.compile(r"fc\.([02]\.(?:weight|bias))"), r"mapper.mlp.\1"),
    (re.compile(r"llm_to_t2i_mapping\.(.+)"), r"mapper.transformer.\1"),
    (re.compile(re.escape(PEFT_ROOT) + r"(.+\.lora_[AB]\.default\.weight)"), r"llm.base_model.model.\1"),
    (re.compile(r"model\.llama_proj\.(weight|bias)"), r"input_projection.\1"),
)
_LLAMA_BASE = (
    r"model\.llama_model\.(?:base_model\.model\.)?(?:model\.norm\.weight"
    r"|model\.layers\.\d+\.(?:self_attn\.(?:[qkvo]_proj(?:\.base_layer)?\.weight|rotary_emb\.inv_freq)"
    r"|mlp\.(?:gate|up|down)_proj\.weight|(?:input|post_attention)_layernorm\.weight)"
    r"|(?:model\.embed_tokens|lm_head)\.original_module\.weight)"
)
# Frozen official parts (mini_gpt4.py:56-87, 106-107; model.py:77-85): skipped, never mapped.
FROZEN = re.compile("|".join((
    _LLAMA_BASE,
    r"model\.(?:visual_encoder|ln_vision|Qformer)\..+",
    r"model\.query_tokens",
    r"(?:sd_text_encoder|vae|unet)\..+",
)))
# The base models the official weights were trained on; shapes cannot tell them from others.
OFFICIAL_LLM = "Vision-CAIR/vicuna-7b"  # Vicuna v0 7B, merged (minigpt4/configs/models/minigpt4.yaml:16)
OFFICIAL_SD = "stabilityai/stable-diffusion-2-1-base"  # model.py:75
OFFICIAL_TOWER = "EVA-ViT-g + the Q-Former of LAVIS's blip2_pretrained_flant5xxl.pth"  # mini_gpt4.py:29-30, 53-78
# Where this project's model comes from when no -c is given: the paper preset of the file's stage.
DEFAULT_CONFIGS = {
    1: ["configs/uas.yaml", "configs/model/paper.yaml"],
    2: ["configs/uas.yaml", "configs/mls.yaml", "configs/model/paper.yaml"],
}


class OfficialCheckpointError(ValueError):
    """A file is not an official MiniGPT-5 checkpoint, or holds a tensor with no place here."""


class ImportMismatchError(ValueError):
    """The imported tensors do not fill this project's model exactly."""


@dataclass
class OfficialWeights:
    """Official tensors under this project's names."""

    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # project key -> "file: official key"
    ignored: list[str] = field(default_factory=list)  # frozen official tensors skipped
    base_vocab: Optional[int] = None  # rows of the official tables before the added tokens
    stage: Optional[int] = None  # of the --ckpt file

    def update(self, other: "OfficialWeights") -> None:
        """Lay ``other`` over these weights (the official stage-2 load over stage 1)."""
        if None not in (self.base_vocab, other.base_vocab) and self.base_vocab != other.base_vocab:
            raise OfficialCheckpointError(
                f"the files disagree on the vocabulary: {self.base_vocab} vs {other.base_vocab} base rows")
        self.weights.update(other.weights)
        self.sources.update(other.sources)
        self.ignored += other.ignored
        self.base_vocab = other.base_vocab if other.base_vocab is not None else self.base_vocab


# ---- reading ----

def load_checkpoint_file(path: PathLike, allow_pickle: bool = False) -> Any:
    """The project's safe read (:func:`lit_models.checkpoint_files.load_checkpoint_file`, memory-mapped),
    its refusals as :class:`OfficialCheckpointError`."""
    try:
        return checkpoint_files.load_checkpoint_file(path, allow_pickle=allow_pickle, mmap=True)
    except checkpoint_files.NotACheckpointError as err:
        raise OfficialCheckpointError(f"'{path}' is not a torch checkpoint: {err.__cause__}") from err
    except checkpoint_files.UnsafeCheckpointError as err:
        raise OfficialCheckpointError(str(err)) from err


def read_official_state(path: PathLike, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The state dict of an official MiniGPT-5 Lightning checkpoint; an error for any other file."""
    if Path(path).suffix == ".safetensors":
        raise OfficialCheckpointError(f"'{path}' is a safetensors file, this project's weights format, not an official "
                                      "checkpoint (a Lightning .ckpt): pass it to --model.init_from as it is")
    checkpoint = load_checkpoint_file(path, allow_pickle)
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise OfficialCheckpointError(f"'{path}' has no 'state_dict': not an official (Lightning) MiniGPT-5 checkpoint")
    if not any(key.startswith("llm_to_t2i_mapping.") for key in state):
        raise OfficialCheckpointError(
            f"'{path}' holds no llm_to_t2i_mapping.* tensors: not an official MiniGPT-5 checkpoint "
            "(this project's own checkpoints load with --model.init_from as they are)")
    return state


def checkpoint_stage(state: Mapping[str, torch.Tensor], path: PathLike) -> int:
    """1 or 2, from which layout the voken tables have (plain, or under PEFT's wrapper)."""
    stages = {VOKEN_TABLES[key][1] for key in state if key in VOKEN_TABLES}
    if len(stages) != 1:
        raise OfficialCheckpointError(
            f"'{path}' has {'voken tables of both stages' if stages else 'no voken table'}; an official checkpoint has "
            f"either {sorted(k for k, v in VOKEN_TABLES.items() if v[1] == 1)} (stage 1) or "
            f"{sorted(k for k, v in VOKEN_TABLES.items() if v[1] == 2)} (stage 2)")
    return stages.pop()


def voken_rows(table: torch.Tensor, key: str) -> tuple[torch.Tensor, int]:
    """The voken rows (8, D) of a full official table (V + 9, D) and V: the last 9 rows are
    the added [IMG0]..[IMG7] and <ImageHere>."""
    added = OFFICIAL_VOKENS + 1
    if table.dim() != 2 or table.shape[0] <= added:
        raise OfficialCheckpointError(f"{key} has shape {tuple(table.shape)}; expected (vocab + {added}, hidden)")
    base = table.shape[0] - added
    return table[base:base + OFFICIAL_VOKENS], base


def project_name(key: str) -> Optional[str]:
    """This project's name of a one-to-one official tensor, or None."""
    for pattern, template in RENAMES:
        if pattern.fullmatch(key):
            return pattern.sub(template, key)
    return None


def convert_state(state: Mapping[str, torch.Tensor], origin: str) -> OfficialWeights:
    """Every tensor of an official state dict under this project's name; frozen ones skipped;
    an error naming each tensor that is neither."""
    out = OfficialWeights()
    unmapped = []
    for key, tensor in state.items():
        if key in VOKEN_TABLES:
            target = VOKEN_TABLES[key][0]
            value, base = voken_rows(tensor, f"{origin}: {key}")
            if out.base_vocab not in (None, base):
                raise OfficialCheckpointError(f"{origin}: the embedding and LM-head tables have different row counts")
            out.base_vocab = base
        elif key == QUERIES:
            if tensor.dim() != 3 or tensor.shape[0] != 1:
                raise OfficialCheckpointError(
                    f"{origin}: {key} has shape {tuple(tensor.shape)}; expected (1, queries, width)")
            target, value = "mapper.queries", tensor[0]
        elif (target := project_name(key)) is not None:
            value = tensor
        elif FROZEN.fullmatch(key):
            out.ignored.append(key)
            continue
        else:
            unmapped.append(key)
            continue
        out.weights[target] = value
        out.sources[target] = f"{origin}: {key}"
    if unmapped:
        raise OfficialCheckpointError(
            f"{origin}: {len(unmapped)} official tensor(s) have no place in this project and are not a known "
            f"frozen part: {unmapped[:8]}{' ...' if len(unmapped) > 8 else ''}")
    return out


def read_minigpt4_projection(path: PathLike) -> OfficialWeights:
    """MiniGPT-4's Q-Former -> Vicuna projection (``llama_proj``) as ``input_projection``."""
    out = OfficialWeights()
    for name, tensor in minigpt4_projection(str(path)).items():
        out.weights[f"input_projection.{name}"] = tensor
        out.sources[f"input_projection.{name}"] = f"{Path(path).name}: model/llama_proj.{name}"
    return out


def place_projection(official: OfficialWeights, cfg: MiniGPT5Config, minigpt4: Optional[PathLike]) -> MiniGPT5Config:
    """Where MiniGPT-4's projection goes: into the weights file when the config trains it, else
    (frozen, as officially) out of it and into ``vision.projection_path``, which loads it."""
    if cfg.vision.kind == "none" or cfg.vision.train_projection or minigpt4 is None:
        return cfg
    for key in [k for k in official.weights if k.startswith("input_projection.")]:
        del official.weights[key], official.sources[key]
    return dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, projection_path=str(Path(minigpt4).resolve())))


def import_official(
    ckpt: PathLike,
    stage1: Optional[PathLike] = None,
    minigpt4: Optional[PathLike] = None,
    allow_pickle: bool = False,
) -> OfficialWeights:
    """The official ``ckpt`` (over the stage-1 file ``stage1`` for a stage-2 one, as the
    official code loads them), plus MiniGPT-4's projection from ``minigpt4``."""
    state = read_official_state(ckpt, allow_pickle)
    stage = checkpoint_stage(state, ckpt)
    result = OfficialWeights(stage=stage)
    if stage1 is not None:
        first = read_official_state(stage1, allow_pickle)
        if stage == 1 or checkpoint_stage(first, stage1) != 1:
            raise OfficialCheckpointError(
                f"--stage1 takes the stage-1 file under a stage-2 --ckpt; got stage {checkpoint_stage(first, stage1)} "
                f"'{stage1}' under stage {stage} '{ckpt}'")
        result.update(convert_state(first, Path(stage1).name))
    result.update(convert_state(state, Path(ckpt).name))
    if minigpt4 is not None:
        result.update(read_minigpt4_projection(minigpt4))
    return result


# ---- fitting this project's model ----

def required_tensors(model: MiniGPT5) -> dict[str, torch.Size]:
    """What an import must fill: every trainable tensor, and the whole mapper (its MLP and
    queries are frozen in stage 2, but come from stage 1)."""
    return {n: p.shape for n, p in model.named_parameters() if p.requires_grad or n.startswith("mapper.")}


_HINTS = (
    ("mapper.out.", "the official mapper has no output head (its width is SD's text width, model.py:87-89): "
                    "set mapper.width to the UNet's cross_attention_dim"),
    ("mapper.mlp.", "a stage-2 file lacks the frozen fc and t2i_decoder_prompt (model.py:118-123): pass --stage1"),
    ("mapper.queries", "a stage-2 file lacks the frozen fc and t2i_decoder_prompt (model.py:118-123): pass --stage1"),
    ("mapper.transformer.", "the official mapper is nn.Transformer(d_model=SD width, 4 + 4 layers, ff 4x, "
                            "model.py:89): set mapper.* as configs/model/paper.yaml does"),
    ("input_projection.", "MiniGPT-4's llama_proj is in no MiniGPT-5 file (frozen, mini_gpt5.py:141-142): pass "
                          "--minigpt4 prerained_minigpt4_7b.pth, or use a config without a vision tower (stage 1)"),
    ("llm.", "official LoRA is r 8, alpha 16 on q_proj and v_proj, stage 2 only (mini_gpt5.py:98-114, "
             "constants.py:19-24): a stage-1 file needs a stage-1 config, a stage-2 file -c configs/mls.yaml"),
    ("vokens.", "the voken rows come from the official embedding and LM head"),
)


def _hint(key: str) -> str:
    return next((hint for prefix, hint in _HINTS if key.startswith(prefix)), "")


def _listed(keys: list[str], describe) -> str:
    lines = [f"  {describe(k)}" for k in keys[:12]]
    if len(keys) > 12:
        lines.append(f"  ... and {len(keys) - 12} more")
    hints = dict.fromkeys(h for h in map(_hint, keys) if h)
    return "\n".join(lines + [f"  hint: {h}" for h in hints])


def check_fits(official: OfficialWeights, model: MiniGPT5) -> None:
    """Raise :class:`ImportMismatchError` naming every required tensor left unfilled, every
    imported tensor this model lacks, and every shape that differs."""
    required = required_tensors(model)
    params = {n: p.shape for n, p in model.named_parameters()}
    got = official.weights
    unknown = sorted(k for k in got if k not in params)
    missing = sorted(k for k in required if k not in got)
    mismatched = sorted(k for k in got if k in params and tuple(got[k].shape) != tuple(params[k]))
    problems = []
    if official.base_vocab is not None and official.base_vocab != model.vokens.first_id:
        problems.append(
            f"the official tables have {official.base_vocab} rows before the added tokens, but this model's "
            f"first voken id is {model.vokens.first_id}: a different LLM vocabulary (the official one is "
            "Vicuna v0 7B's 32000)")
    if missing:
        problems.append(f"{len(missing)} tensor(s) of this model are not filled by the import:\n"
                        + _listed(missing, lambda k: f"{k} {tuple(required[k])}"))
    if unknown:
        problems.append(f"{len(unknown)} imported tensor(s) have no place in this model:\n"
                        + _listed(unknown, lambda k: f"{k} (from {official.sources[k]})"))
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es), official vs this model:\n" + _listed(
            mismatched, lambda k: f"{k}: {tuple(got[k].shape)} from {official.sources[k]}, here {tuple(params[k])}"))
    if problems:
        raise ImportMismatchError("the official weights do not fit this model's config:\n" + "\n".join(problems))


# ---- writing ----

def checkpoint_beside(out: PathLike) -> Path:
    """The MiniGPT5Module checkpoint's path beside the weights file ``out`` (a .safetensors)."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must name a .safetensors file, got '{out}'")
    return out.with_suffix(".ckpt")


def write_outputs(
    official: OfficialWeights, model: MiniGPT5, out: PathLike, optim: OptimConfig = OptimConfig()
) -> tuple[Path, Path]:
    """The trainable-weights file ``out`` and, beside it, a MiniGPT5Module checkpoint of
    ``model.cfg`` that starts from it (``generate --ckpt``, ``eval --ckpt``)."""
    out, ckpt = Path(out), checkpoint_beside(out)
    # Keys as in MiniGPT5Module's state dict; clone, so no voken slice carries its whole mmapped table.
    weights = {MODULE_PREFIX + k: v.detach().to(torch.float32).clone()
               for k, v in sorted(official.weights.items())}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out), metadata={"imported_from": "; ".join(sorted(set(
        s.split(": ")[0] for s in official.sources.values())))})
    trainable = {MODULE_PREFIX + n for n, p in model.named_parameters() if p.requires_grad}
    torch.save({
        "state_dict": {k: v for k, v in weights.items() if k in trainable},
        "hyper_parameters": {"config": model.cfg, "optim": optim, "init_from": str(out.resolve())},
        "pytorch-lightning_version": lightning.__version__,
        "epoch": 0,
        "global_step": 0,
        "official_sources": {MODULE_PREFIX + k: v for k, v in official.sources.items()},
    }, ckpt)
    return out, ckpt


def base_model_warnings(cfg: MiniGPT5Config) -> list[str]:
    """Where the config's frozen base models may differ from those the official weights were
    trained on (the LoRA deltas, voken rows and mapper only make sense on those)."""
    notes = []
    if cfg.llm.path != OFFICIAL_LLM:
        notes.append(f"llm.path is {cfg.llm.path!r}; the official weights were trained on Vicuna v0 7B "
                     f"({OFFICIAL_LLM}): unless that is a merged v0 folder, set --model.config.llm.path to one")
    if cfg.diffusion.path != OFFICIAL_SD:
        notes.append(f"diffusion.path is {cfg.diffusion.path!r}; the official mapper was trained for {OFFICIAL_SD}")
    if cfg.vision.kind != "none":  # no hub id names that tower, so this is always said
        notes.append(f"vision.path is {cfg.vision.path!r}; llama_proj and the official LoRA were trained on the "
                     f"features of {OFFICIAL_TOWER}: check that the tower is the same")
    return notes


def read_config(args: list[str]) -> tuple[MiniGPT5Config, OptimConfig]:
    """The model and optimizer configs of ``fit``-style ``-c`` files and flags, nothing built."""
    config = fit_config(args)
    return (dataclass_from(MiniGPT5Config, config.model.config.as_dict()),
            dataclass_from(OptimConfig, config.model.optim.as_dict()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minigpt5 import-official", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Other --model.* / --data.* flags go to the config, as for fit.")
    parser.add_argument("--ckpt", required=True,
                        help="official stage1_cc3m.ckpt, stage2_vist.ckpt or stage2_mmdialog.ckpt")
    parser.add_argument("--stage1",
                        help="official stage1_cc3m.ckpt under a stage-2 --ckpt (the mapper's fc and queries)")
    parser.add_argument("--minigpt4", help="MiniGPT-4's prerained_minigpt4_7b.pth: the input projection (llama_proj)")
    parser.add_argument("--out", required=True, help="the .safetensors file to write; the .ckpt goes beside it")
    parser.add_argument("-c", "--config", action="append", help="this project's config files, repeatable "
                        "(default: configs/uas.yaml [+ configs/mls.yaml] + configs/model/paper.yaml)")
    parser.add_argument("--allow-pickle", action="store_true", help="unpickle the files in full (trusted files only)")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args, overrides = build_parser().parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        checkpoint_beside(args.out)
        official = import_official(args.ckpt, args.stage1, args.minigpt4, allow_pickle=args.allow_pickle)
        configs = args.config or DEFAULT_CONFIGS[official.stage]
        cfg, optim = read_config([a for c in configs for a in ("-c", c)] + overrides)
        cfg = place_projection(official, cfg, args.minigpt4)
        model = MiniGPT5.on_meta(cfg)
        check_fits(official, model)
        out, ckpt = write_outputs(official, model, args.out, optim)
    except (ValueError, FileNotFoundError, WeightsNotFoundError) as err:  # the import's errors are ValueErrors
        print(f"minigpt5 import-official: error: {err}", file=sys.stderr)
        return 2
    for note in base_model_warnings(cfg):
        print(f"warning: {note}", file=sys.stderr)
    print(f"stage-{official.stage} official weights: {len(official.weights)} tensors -> {out}; "
          f"{len(official.ignored)} frozen official tensors skipped{': ' if official.ignored else ''}"
          f"{', '.join(official.ignored[:4])}{' ...' if len(official.ignored) > 4 else ''}")
    print(f"checkpoint for generate / eval (config: {' + '.join(configs)}): {ckpt}")
    return 0
