"""One folder per trained model: ``save_pretrained`` writes it, ``from_pretrained`` reads it.

A folder holds::

    config.json                      format, stage, the MiniGPT5Config (base models by hub id or path)
    model.safetensors                the trainable weights outside the LLM: voken rows, mapper, projection
    adapter_config.json              the LLM's PEFT adapter in PEFT's own layout (stage 2), loadable
    adapter_model.safetensors          alone by ``peft.PeftModel.from_pretrained(llm, folder)``
    frozen_fingerprint.safetensors   values sampled from the frozen parts (minigpt5.fingerprint)
    README.md                        the model card: base models, settings, training, results

The frozen base weights (LLM, SD, vision tower) are never copied: the config names them by
hub id or by absolute local path, and loading checks their fingerprints, so a folder is never
paired with other frozen weights. The tiny preset's random parts have no path: they are a
function of the config and the seed, rebuilt the same way, and checked the same way. Loading
reads no YAML and no environment variable; the stage comes from ``config.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

import torch
from peft import set_peft_model_state_dict
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from minigpt5.builders import build_components
from minigpt5.config import ConfigError, MiniGPT5Config, dataclass_from, stage_of
from minigpt5.fingerprint import check_frozen_parts, part_paths
from minigpt5.inference import InferenceOptions, quantization_config
from minigpt5.model_card import model_card

log = logging.getLogger(__name__)

FORMAT = "minigpt5-pretrained"
VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"  # PEFT's names
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
FINGERPRINT_FILE = "frozen_fingerprint.safetensors"
CARD_FILE = "README.md"
ADAPTER_PREFIX = "llm."  # the adapter's trainable tensors live under the LLM


class PretrainedFolderError(ValueError):
    """A model folder (or hub id) is missing, lacks a file, holds a broken one, or does not fit."""


class PretrainedMixin:
    """``save_pretrained`` and ``from_pretrained`` for :class:`minigpt5.model.MiniGPT5` (a mixin, so
    this module needs no import of the model's)."""

    def save_pretrained(self, folder: Union[str, Path], *, training: Optional[dict[str, Any]] = None,
                        results: Optional[list[dict[str, Any]]] = None) -> Path:
        """Write this model as one folder (:func:`save_pretrained`)."""
        return save_pretrained(self, folder, training=training, results=results)

    @classmethod
    def from_pretrained(cls, source: Union[str, Path], **options: Any) -> Any:
        """The model of a folder written by :meth:`save_pretrained`, or of a hub id holding one
        (``options``: the fields of :class:`minigpt5.inference.InferenceOptions`)."""
        return from_pretrained(cls, source, InferenceOptions(**options))


# ---- writing ----

def portable_config(cfg: MiniGPT5Config) -> MiniGPT5Config:
    """``cfg`` as a folder keeps it: local base-model paths made absolute (the folder is read from
    anywhere), and a trainable projection's init file dropped (its weights are in the folder)."""
    def absolute(path: Optional[str]) -> Optional[str]:
        return str(Path(path).resolve()) if path is not None and Path(path).exists() else path

    vision = dataclasses.replace(
        cfg.vision, path=absolute(cfg.vision.path),
        projection_path=None if cfg.vision.train_projection else absolute(cfg.vision.projection_path),
    )
    return dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, path=absolute(cfg.llm.path)),
                               diffusion=dataclasses.replace(cfg.diffusion, path=absolute(cfg.diffusion.path)),
                               vision=vision)


def save_pretrained(
    model: Any, folder: Union[str, Path], *, training: Optional[dict[str, Any]] = None,
    results: Optional[list[dict[str, Any]]] = None,
) -> Path:
    """Write ``model`` to ``folder`` (the files of the module docstring); return the folder.

    ``training``: settings of the run that trained it (optimizer, steps, data), and ``results``:
    evaluation results (``minigpt5 eval``'s results.json contents), both for the model card.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    cfg = portable_config(model.cfg)
    trainable = {k: v.detach().cpu().contiguous() for k, v in model.trainable_state_dict().items()}
    own = {k: v for k, v in trainable.items() if not k.startswith(ADAPTER_PREFIX)}
    save_file(own, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    if cfg.peft.method != "none":
        model.llm.save_pretrained(str(out))  # PEFT's layout (it also writes a README.md, replaced below)
    save_file({k: v.contiguous() for k, v in model.frozen_fingerprint.items()}, str(out / FINGERPRINT_FILE))
    info = {"format": FORMAT, "version": VERSION, "stage": stage_of(cfg), "config": dataclasses.asdict(cfg)}
    (out / CONFIG_FILE).write_text(json.dumps(info, indent=2) + "\n")
    counts = {"trainable": sum(v.numel() for v in trainable.values()),
              "frozen": sum(p.numel() for p in model.parameters() if not p.requires_grad)}
    (out / CARD_FILE).write_text(model_card(cfg, stage_of(cfg), counts, training, results))
    log.info("wrote %s: %d trainable tensors, stage %d", out, len(trainable), stage_of(cfg))
    return out


# ---- reading ----

def resolve_folder(source: Union[str, Path]) -> Path:
    """The local folder of ``source``: itself, or a hub id's snapshot (``huggingface_hub``)."""
    path = Path(source)
    if path.is_dir():
        return path
    name = str(source)
    if path.exists() or name.count("/") != 1 or name.startswith((".", "/")) or "\\" in name:
        raise PretrainedFolderError(f"no model folder at '{source}' (and it is not a hub id of the form owner/name)")
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(name))
    except Exception as err:  # offline, unknown repository, network: all end in the same advice
        offline = " (HF_HUB_OFFLINE is set: only the local cache is read)" if constants.HF_HUB_OFFLINE else ""
        raise PretrainedFolderError(
            f"could not get model '{name}' from the Hugging Face hub{offline}: {err.__class__.__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}\nDownload it on a machine with internet "
            f"(`hf download {name} --local-dir DIR`) and pass DIR, or pass a local model folder."
        ) from err


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file; errors name the file."""
    if not path.is_file():
        raise PretrainedFolderError(f"the model folder '{path.parent}' has no {path.name}")
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PretrainedFolderError(f"'{path}' is not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise PretrainedFolderError(f"'{path}' must hold a JSON object, not {type(value).__name__}")
    return value


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file; errors name the file."""
    if not path.is_file():
        raise PretrainedFolderError(f"the model folder '{path.parent}' has no {path.name}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise PretrainedFolderError(f"'{path}' is not a readable safetensors file: {err}") from err


def read_config(folder: Path) -> tuple[MiniGPT5Config, int]:
    """The folder's model config and stage (checked against each other)."""
    path = folder / CONFIG_FILE
    info = read_json(path)
    if info.get("format") != FORMAT:
        raise PretrainedFolderError(f"'{path}' is not a MiniGPT-5 model config (format {info.get('format')!r}, "
                                    f"expected {FORMAT!r})")
    if not isinstance(info.get("version"), int) or info["version"] > VERSION:
        raise PretrainedFolderError(f"'{path}' has format version {info.get('version')!r}; this code reads up to "
                                    f"{VERSION} (a newer MiniGPT-5 wrote it)")
    try:
        cfg = dataclass_from(MiniGPT5Config, info.get("config") or {})
    except (ConfigError, TypeError) as err:
        raise PretrainedFolderError(f"'{path}' holds an invalid model config: {err}") from err
    stage = info.get("stage")
    if stage != stage_of(cfg):
        raise PretrainedFolderError(f"'{path}' says stage {stage!r}, but its config is a stage-{stage_of(cfg)} model")
    return cfg, stage


def load_weights(model: Any, folder: Path) -> None:
    """The folder's trainable weights (and adapter) into ``model``; every trainable tensor must be there."""
    path = folder / WEIGHTS_FILE
    weights = read_tensors(path)
    expected = {k for k in model.trainable_state_dict() if not k.startswith(ADAPTER_PREFIX)}
    own = model.state_dict()
    missing, unknown = sorted(expected - set(weights)), sorted(set(weights) - expected)
    shapes = [f"{k} {tuple(v.shape)} (model: {tuple(own[k].shape)})" for k, v in weights.items()
              if k in expected and v.shape != own[k].shape]
    if missing or unknown or shapes:
        raise PretrainedFolderError(f"'{path}' does not fit the model its config builds: missing {missing[:5]}, "
                                    f"unexpected {unknown[:5]}, shape mismatches {shapes[:5]}")
    model.load_state_dict(weights, strict=False)
    if model.cfg.peft.method == "none":
        return
    read_json(folder / ADAPTER_CONFIG_FILE)  # present and readable: PEFT itself reads it
    adapter_path = folder / ADAPTER_WEIGHTS_FILE
    try:
        result = set_peft_model_state_dict(model.llm, read_tensors(adapter_path))
    except RuntimeError as err:  # a shape mismatch
        raise PretrainedFolderError(f"'{adapter_path}' does not fit the LLM adapter of the config: {err}") from err
    unexpected = list(result.unexpected_keys)
    absent = [k for k in result.missing_keys if "lora_" in k or "prompt_encoder" in k]
    if unexpected or absent:
        raise PretrainedFolderError(f"'{adapter_path}' does not fit the LLM adapter of the config: unexpected "
                                    f"{unexpected[:5]}, missing {absent[:5]}")


def from_pretrained(model_class: type, source: Union[str, Path], options: Optional[InferenceOptions] = None) -> Any:
    """The ``model_class`` (MiniGPT5) of a folder written by :func:`save_pretrained`, or of a hub id holding
    one, ready for generation (eval mode) on ``options.device``, with ``options``' precision, quantization
    and offloading."""
    options = options or InferenceOptions()
    folder = resolve_folder(source)
    cfg, _ = read_config(folder)
    saved_fingerprint = read_tensors(folder / FINGERPRINT_FILE)
    cfg = options.apply_dtype(cfg)
    quantization = quantization_config(options.quantize, options.device) if options.quantize else None
    model = model_class(cfg, build_components(cfg, quantization=quantization))
    check_frozen_parts(saved_fingerprint, model.frozen_fingerprint, f"model folder '{folder}'", part_paths(cfg))
    load_weights(model, folder)
    return place(model, options)


def place(model: Any, options: InferenceOptions) -> Any:
    """Move ``model`` to ``options.device`` and switch it to eval mode. A quantized LLM stays where
    transformers loaded it; with ``options.offload`` the occasional parts stay on the CPU (never all
    on the GPU at once, not even while loading)."""
    offloaded = set(model.offloadable_parts()) if options.offload else set()
    for name, child in model.named_children():
        if name not in offloaded and not (name == "llm" and options.quantize):
            child.to(options.device)
    if options.offload:
        model.enable_offload()
    return model.eval()


def with_options(model: Any, options: InferenceOptions) -> Any:
    """``model`` (built or loaded any way) under ``options``: placed and offloaded as asked; a change of
    precision or a quantized LLM rebuilds it through a temporary folder, as loading one would."""
    if options.dtype is None and options.quantize is None:
        return place(model, options)
    with tempfile.TemporaryDirectory() as folder:
        return from_pretrained(type(model), save_pretrained(model, folder), options)
