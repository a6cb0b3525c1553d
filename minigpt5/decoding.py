"""Decoding defaults: the one place ``minigpt5 generate``, ``minigpt5 eval`` and the evaluation
callback take them from, so that the three decode a model alike.

A preset names the settings that differ from :class:`~minigpt5.generate.GenerationConfig`'s
field defaults; :func:`resolve_decoding` lays a caller's explicit values (flags, callback
arguments; None means unset) over it. Settings no preset names (the diffusion sampler, and
the world's guidance scale and step count) stay with the model's ``cfg.guidance``.

- ``official``: how the authors' code (eric-ai-lab/MiniGPT-5 at 915ab17) writes and draws,
  each value with its file and line below; used for ``cc3m``, ``vist`` and ``mmdialog``.
- ``world``: the synthetic world's turns (``synthetic-vist``, ``synthetic-dialog``), scored
  word for word by rules (:mod:`evaluation.world_scores`): greedy, and without a repetition
  penalty, since the rules repeat words ("first a red circle" / "then a red square").
"""

from __future__ import annotations

import dataclasses
from typing import Any

from minigpt5.generate import GenerationConfig

PRESETS: dict[str, dict[str, Any]] = {
    "official": {
        "temperature": 1.0,  # model.py:307 (MiniGPT5_Model.generate -> predict)
        "top_p": 0.9,  # minigpt4/models/mini_gpt5.py:287, predict's default (model.py:307 passes none)
        "repetition_penalty": 2.0,  # model.py:307
        # mini_gpt5.py:302-317: llama_model.generate(inputs_embeds=...) with no input_ids, so HF's
        # input_ids, which the penalty reads, hold only the new tokens (transformers 4.31).
        "penalty_scope": "generated",
        "min_new_tokens": 1,  # mini_gpt5.py:287/309: min_length=1, counted over those new tokens
        "max_new_tokens": 256,  # model.py:302
        "guidance_scale": 7.5,  # model.py:302
        "num_inference_steps": 50,  # model.py:328: StableDiffusionPipeline.__call__'s default
    },
    "world": {"temperature": 0.0, "repetition_penalty": 1.0, "max_new_tokens": 32},
}


def resolve_decoding(preset: str, **overrides: Any) -> GenerationConfig:
    """The preset's :class:`GenerationConfig`, with each override that is not None on top."""
    if preset not in PRESETS:
        raise ValueError(f"decoding preset must be one of {', '.join(PRESETS)}; got {preset!r}")
    fields = {f.name for f in dataclasses.fields(GenerationConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"resolve_decoding: not GenerationConfig fields: {', '.join(unknown)}")
    return GenerationConfig(**{**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}})
