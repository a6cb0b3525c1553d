"""The README.md model card of a model folder (:mod:`minigpt5.pretrained`): what the model is
built from, how it words its prompts, how it was trained, and how it scored, where known."""

from __future__ import annotations

import json
from typing import Any, Optional

from minigpt5.config import MiniGPT5Config
from minigpt5.families import FAMILIES

STAGES = {1: "stage 1 (UAS: unimodal alignment on image-caption pairs)",
          2: "stage 2 (MLS: multimodal learning on interleaved stories and dialogues)"}


def _base(path: Optional[str], tiny: str) -> str:
    return f"`{path}`" if path else f"tiny random stand-in ({tiny}; rebuilt from the config's sizes and seed)"


def _lora_targets(names: Optional[tuple[str, ...]]) -> str:
    return ", ".join(names) if names else "the LLM family's query and value projections"


def _value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def results_section(results: list[dict[str, Any]]) -> list[str]:
    """One table per results file (``minigpt5 eval``'s results.json): a row per system and settings."""
    lines = ["## Evaluation", ""]
    for result in results:
        rows = [r for r in result.get("rows", []) if r.get("kind", "run") == "run"]
        metrics = sorted({k for r in rows for k, v in (r.get("metrics") or {}).items() if isinstance(v, (int, float))})
        lines += [f"Protocol `{result.get('protocol', '?')}` on `{result.get('shards', '?')}` "
                  f"({result.get('date', 'date unknown')}; extractors: {result.get('extractors', '?')}).", ""]
        lines += ["| system | guidance | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 2) + "|"]
        for row in rows:
            scores = [_value(row["metrics"][m]) if m in (row.get("metrics") or {}) else "" for m in metrics]
            guidance = (row.get("settings") or {}).get("guidance_scale", "")
            lines.append(f"| {row.get('system', '?')} | {_value(guidance)} | " + " | ".join(scores) + " |")
        lines.append("")
    return lines


def model_card(
    cfg: MiniGPT5Config, stage: int, counts: dict[str, int], training: Optional[dict[str, Any]] = None,
    results: Optional[list[dict[str, Any]]] = None,
) -> str:
    """The card's Markdown."""
    llm, sd, vision = cfg.llm, cfg.diffusion, cfg.vision
    lines = [
        "---", "library_name: minigpt5", "tags: [minigpt5, interleaved-generation, text-to-image, peft]", "---", "",
        "# MiniGPT-5 model", "",
        f"A MiniGPT-5 model (arXiv 2310.02239) after {STAGES[stage]}. Load it with "
        "`MiniGPT5.from_pretrained(folder)` or `minigpt5 generate --model FOLDER`; the frozen base models "
        "below are read from their paths or hub ids, never copied here.", "",
        "## Base models (frozen)", "",
        f"- LLM: {_base(llm.path, f'{FAMILIES[llm.family].name}, {llm.hidden_size} wide, {llm.num_layers} layers')}, {llm.torch_dtype}",
        f"- Stable Diffusion: {_base(sd.path, f'UNet {list(sd.unet_channels)}, {sd.latent_space} space')}, "
        f"{sd.resolution}px, {sd.torch_dtype}",
        "- vision tower: " + ("none (stage 1 reads no context images)" if vision.kind == "none" else
                              f"{vision.kind}, {_base(vision.path, f'{vision.hidden_size} wide')}"),
        "",
        "## What was trained", "",
        f"- {counts['trainable']:,} trainable parameters ({counts['frozen']:,} frozen): "
        f"{cfg.vokens.num_vokens} voken rows `{cfg.vokens.tokens[0]}`..`{cfg.vokens.tokens[-1]}`, the feature mapper "
        f"({cfg.mapper.num_encoder_layers}+{cfg.mapper.num_decoder_layers} layers, {cfg.mapper.num_queries} queries)"
        + (", the input projection" if vision.kind != "none" and vision.train_projection else "")
        + (f", a {cfg.peft.method} adapter on the LLM (PEFT layout: adapter_config.json, adapter_model.safetensors)"
           + (f", r {cfg.peft.lora_r}, alpha {cfg.peft.lora_alpha} on {_lora_targets(cfg.peft.lora_target_modules)}"
              if cfg.peft.method == "lora" else "") if cfg.peft.method != "none" else ""),
        f"- prompt template: `{cfg.template.name}`" + (f", prompt {cfg.template.prompt!r}" if cfg.template.prompt else ""),
        f"- losses: text x{cfg.loss.text_weight:g}, LDM x{cfg.loss.ldm_weight:g}, CAP x{cfg.loss.cap_weight:g}; "
        f"Min-SNR gamma {cfg.loss.min_snr_gamma}; classifier-free dropout {cfg.guidance.cfg_dropout:g}",
        f"- sampling defaults: {cfg.guidance.sampler}, {cfg.guidance.num_inference_steps} steps, "
        f"guidance {cfg.guidance.scale:g}", "",
    ]
    if training:
        lines += ["## Training", ""] + [f"- {key}: {_value(value)}" for key, value in training.items()] + [""]
    if results:
        lines += results_section(results)
    lines += ["The full configuration is in `config.json`.", ""]
    return "\n".join(lines)
